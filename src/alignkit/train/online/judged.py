"""What online DPO and online KTO share: the iteration schedule, the judge, replay, and the checkpointed pairs.

    every method.iteration_steps steps: the prompts of those steps -> rollout.samples_per_prompt samples each from the
      current policy -> rewards (method.rewards / reward_model) or method.judge -> the subclass's ``make_items``
      (DPO: a pair per prompt; KTO: a desirable / undesirable label per sample) -> reference log-probs
    each step: its prompts' items + items replayed from earlier iterations (and method.replay_data) at
      method.replay_ratio -> the subclass's ``loss`` -> the loop's optimizer step

The pending items of an iteration and the replay pool are part of the checkpoint, so a resumed run trains on the
same items. A subclass defines ``objective`` (its name in logs), ``item_type``, ``needs_reference``, ``make_items``,
``offline_items`` (replay_data), ``collate`` and ``loss``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from alignkit.data import Sample, pad_sequences
from alignkit.train.metrics import MetricSums
from alignkit.train.online.rollout import OnlineMethod
from alignkit.train.online.seeds import REPLAY, sample_seed
from alignkit.train.steps import global_batch_indices


class JudgedOnlineMethod(OnlineMethod):
    """Online methods whose training items are judged samples (``config.JudgedOnlineConfig``)."""

    objective = "judged"  # the training objective, as logs name it
    item_type: type = object  # what make_items makes, trains on and checkpoints (a dataclass with ``fresh``)

    def __init__(self, cfg, pad_id: int):
        super().__init__(cfg, pad_id)
        self.judge = None
        self.pending: dict[int, list] = {}  # step -> this process's fresh examples of that step
        self.current: list = []  # examples of the running iteration (replayable from the next one)
        self.pool: list = []  # replay pool: earlier iterations' examples and method.replay_data

    def make_items(self, items, samples: list[Sample], refs: list, sums: MetricSums) -> list[list]:
        """Per prompt (``items`` order), the training items its samples make (possibly none)."""
        raise NotImplementedError

    def offline_items(self, spec: str) -> list:
        """The records of ``spec`` (method.replay_data) as replayable items with their reference sums."""
        raise NotImplementedError

    def setup(self, model, train_items, eval_items, accelerator):
        train_items, eval_items = super().setup(model, train_items, eval_items, accelerator)
        if self.mc.judge is not None:
            from alignkit.judges import load_judge

            self.judge = load_judge(self.mc.judge, "method.judge", device=accelerator.device.type)
            self.log(f"judge: {self.judge.name}" + ("" if self.judge.order_invariant else ", both orders"))
        if self.mc.replay_data:
            self.pool = self.offline_items(self.mc.replay_data)
            self.log(f"replay pool: {len(self.pool)} examples from {self.mc.replay_data}")
        n = self.mc.iteration_steps
        schedule = "fully online" if n == 1 else f"iterative, {n} steps per iteration"
        self.log(f"{self.objective}: {schedule}, replay ratio {self.mc.replay_ratio}")
        return train_items, eval_items

    # ---- the rollout: an iteration's prompts -> judged items
    def updates(self, module, items, step, sums: MetricSums):
        if step not in self.pending:  # an iteration starts
            self.start_iteration(step, sums)
        fresh = self.pending.pop(step, [])
        batch = fresh + self.draw_replay(len(fresh), step)
        sums.add_scalar("pairs/trained", float(len(batch)))
        k, n = self.mc.minibatches, len(batch)
        blocks = [batch[m * n // k : (m + 1) * n // k] for m in range(k)]  # every pair; an empty block is no step
        for it in range(self.mc.iterations):
            for m, block in enumerate(blocks):
                self.pass_index = (it, m)
                yield block

    def start_iteration(self, step: int, sums: MetricSums) -> None:
        """Sample, score and judge the prompts of steps ``step .. step + iteration_steps - 1`` (this process's)."""
        self.pool = (self.pool + self.current)[-self.mc.replay_size :]
        self.current = []
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        steps = range(step, step + self.mc.iteration_steps)
        per_step = [
            [self.train_items[i] for i in global_batch_indices(
                len(self.train_items), t, self.ro.prompts_per_step, self.cfg.train.seed, self.cfg.train.shuffle
            )][rank::world]
            for t in steps
        ]  # fmt: skip
        items = [x for chunk in per_step for x in chunk]
        times = {"generate": 0.0, "reward": 0.0, "reference": 0.0}
        items, samples, rewards, reward_metrics, per_function = self.generate_and_score(items, step, times, sums)
        self.shape_rewards(samples, rewards)
        t0 = time.perf_counter()
        refs = self.reference_sums([(s.prompt_ids, s.completion_ids) for s in samples])
        times["reference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        made = self.make_items(items, samples, refs, sums)  # one list per prompt
        times["judge"] = time.perf_counter() - t0
        self.add_rollout_metrics(sums, items, samples, per_function, reward_metrics)
        if self.ro.temperature == 1.0 and refs[0] is not None:  # k1 on the policy's own samples
            kl = [sum(s.sampler_logps) - r for s, r in zip(samples, refs)]
            sums.add({"kl/sequence": torch.tensor(kl)})
        for name, seconds in times.items():
            if name != "tokens":
                sums.add_scalar(f"time/{name}", seconds)
        start = 0
        for t, chunk in zip(steps, per_step):
            self.pending[t] = [x for group in made[start : start + len(chunk)] for x in group]
            start += len(chunk)
        self.current = [x for group in made for x in group]

    def sample_scores(self, items, samples: list[Sample]) -> list[float | None]:
        """Each sample's score: its reward (method.rewards / reward_model), or method.judge's pointwise score."""
        if self.judge is None:
            return [s.reward for s in samples]
        names = sorted({k for x in items for k in x.columns})
        columns = {k: [items[s.group].columns.get(k) for s in samples] for k in names}
        return self.judge.score([items[s.group].prompt for s in samples], [s.text for s in samples], columns=columns)

    def draw_replay(self, n_fresh: int, step: int) -> list:
        """Pairs from the pool so that they are ``replay_ratio`` of the step's pairs (seeded by step and process)."""
        r = self.mc.replay_ratio
        k = min(len(self.pool), round(n_fresh * r / (1 - r))) if r > 0 else 0
        if k == 0:
            return []
        rng = np.random.default_rng(sample_seed(self.cfg.train.seed, step, self.accelerator.process_index, 0, REPLAY))
        return [dataclasses.replace(self.pool[i], fresh=False) for i in rng.choice(len(self.pool), k, replace=False)]

    @torch.no_grad()
    def reference_sums(self, rows: list[tuple[list[int], list[int]]]) -> list[float | None]:
        """Summed reference log-probs (temperature 1) of (prompt ids, completion ids) rows; None without one."""
        if self.reference is None:
            return [None] * len(rows)
        out: list[float | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        bs = self.cfg.train.eval_batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            batch = pad_sequences([rows[i][0] for i in idx], [rows[i][1] for i in idx], self.pad_id)
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            with self.accelerator.autocast():
                sums = self.reference.logps(batch).float().cpu().tolist()
            for i, v in zip(idx, sums):
                out[i] = v
        return out

    # ---- training
    def weight(self, item) -> float:
        return 1.0

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    # ---- checkpoint: the iteration's pending items and the pool, so a resume trains on the same items
    def state_dict(self) -> dict:
        pack = lambda pairs: [dataclasses.asdict(p) for p in pairs]  # noqa: E731
        return {"pending": {str(k): pack(v) for k, v in self.pending.items()}, "current": pack(self.current),
                "pool": pack(self.pool)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        unpack = lambda rows: [self.item_type(**r) for r in rows]  # noqa: E731
        self.pending = {int(k): unpack(v) for k, v in state.get("pending", {}).items()}
        self.current, self.pool = unpack(state.get("current", [])), unpack(state.get("pool", []))

    def finish(self, module, train_items, eval_items, eval_metrics) -> dict[str, str]:
        if self.judge is not None:
            self.judge.close()
        return super().finish(module, train_items, eval_items, eval_metrics)
