"""Online and iterative DPO (and the rest of the DPO family): the rollout phase makes the pairs, a judge labels them.

    every method.iteration_steps steps: prompts of those steps -> rollout.samples_per_prompt samples each from the
      current policy (the rollout's sampler) -> rewards (method.rewards / reward_model) -> a (chosen, rejected) pair
      per prompt from a judge: the best and worst sample by reward, or an order-sensitive (LLM) judge's verdict on
      the first two samples asked in both orders -> reference log-probs of both
    each step: its prompts' pairs + pairs replayed from earlier iterations (and method.replay_data) at
      method.replay_ratio -> the DPO-family loss (``train.preference.pair_loss``) -> the loop's optimizer step

``iteration_steps: 1`` is fully online DPO with an AI or verifier judge (Guo et al. 2024, "Direct Language Model
Alignment from Online AI Feedback"); more is iterative DPO (Xu et al. 2023; Yuan et al. 2024), whose pairs are all
sampled by the policy of the iteration's start. The reference stays the initial policy. The pending pairs of an
iteration and the replay pool are part of the checkpoint, so a resumed run trains on the same pairs.

Monitors: ``pairs/*`` (made, ties, unjudged per prompt), ``judge/inconsistent`` and ``judge/self_consistency``
(an order-sensitive judge), ``kl/sequence`` (k1 on the samples, at temperature 1), ``completion/length``, and the
implicit reward of replayed pairs apart from fresh ones (``replay/margins`` vs ``rewards/margins``): its drift.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from alignkit.data import Sample, collate_pairs, pad_sequences
from alignkit.logprobs import sequence_logprobs
from alignkit.losses import LOSSES
from alignkit.train.loop import global_batch_indices
from alignkit.train.methods.preference import ScoredPair, pair_loss
from alignkit.train.metrics import MetricSums
from alignkit.train.online.rollout import OnlineMethod
from alignkit.train.online.seeds import REPLAY, sample_seed


@dataclass(frozen=True)
class OnlinePair(ScoredPair):
    """A judged pair with its reference sums; ``fresh``: made from this step's prompts (else replayed)."""

    fresh: bool = True


class OnlinePreferenceMethod(OnlineMethod):
    name = "online_dpo"
    item_type = OnlinePair  # what make_items makes, trains on and checkpoints

    def __init__(self, cfg, pad_id: int):
        super().__init__(cfg, pad_id)
        self.judge = None
        self.pending: dict[int, list] = {}  # step -> this process's fresh examples of that step
        self.current: list = []  # examples of the running iteration (replayable from the next one)
        self.pool: list = []  # replay pool: earlier iterations' examples and method.replay_data
        if hasattr(self.mc, "loss"):
            self.spec = LOSSES[self.mc.loss]
            params = {"beta": self.mc.resolved_beta, "label_smoothing": self.mc.label_smoothing,
                      "gamma": self.mc.gamma}  # fmt: skip
            self.loss_params = {k: v for k, v in params.items() if k in self.spec.params}
            self.sft_weight = self.mc.resolved_sft_weight

    def needs_reference(self) -> bool:
        return self.spec.needs_reference

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
        self.log(f"{getattr(self.mc, 'loss', 'kto')}: {schedule}, replay ratio {self.mc.replay_ratio}")
        return train_items, eval_items

    def offline_items(self, spec: str) -> list[OnlinePair]:
        from alignkit.data import to_pairwise, tokenize_pairs, validate_records
        from alignkit.data.readers import read_records

        examples = validate_records(read_records(spec), to_pairwise)[0]
        pairs, _ = tokenize_pairs(examples, self.tok, self.cfg.data.max_length, self.cfg.max_prompt_length)
        refs = self.reference_sums([(p.prompt_ids, c) for p in pairs for c in (p.chosen_ids, p.rejected_ids)])
        return [OnlinePair(**p.__dict__, ref_chosen=refs[2 * i], ref_rejected=refs[2 * i + 1], fresh=False)
                for i, p in enumerate(pairs)]  # fmt: skip

    # ---- the rollout: an iteration's prompts -> judged pairs
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

    def make_items(self, items, samples: list[Sample], refs: list, sums: MetricSums) -> list[list[OnlinePair]]:
        """Per prompt (``items`` order), its pair, or nothing (a tie, or unjudged)."""
        g = self.ro.samples_per_prompt
        groups = [list(range(p * g, (p + 1) * g)) for p in range(len(items))]
        picks: list[tuple[int, int] | None] = []
        ties = unjudged = 0
        if self.judge is not None and not self.judge.order_invariant:
            from alignkit.judges import consistency, judge_pairs

            names = sorted({k for x in items for k in x.columns})
            columns = {k: [x.columns.get(k) for x in items] for k in names}
            verdicts = judge_pairs(self.judge, [x.prompt for x in items], [samples[i[0]].text for i in groups],
                                   [samples[i[1]].text for i in groups], columns=columns,
                                   both_orders=self.mc.both_orders, inconsistent="drop")  # fmt: skip
            stats = consistency(verdicts)
            if "self_consistency" in stats:
                sums.add_scalar("judge/self_consistency", stats["self_consistency"])
            sums.add_scalar("judge/inconsistent", float(sum(v.detail.get("consistent") is False for v in verdicts)))
            for grp, v in zip(groups, verdicts):
                if v.outcome is None:
                    unjudged += v.detail.get("consistent") is not False
                    picks.append(None)
                elif v.outcome == 0.5:
                    ties += 1
                    picks.append(None)
                else:
                    picks.append((grp[0], grp[1]) if v.outcome == 1.0 else (grp[1], grp[0]))
        else:
            scores = self.sample_scores(items, samples)
            for grp in groups:
                scored = [i for i in grp if scores[i] is not None]
                if len(scored) < 2:
                    unjudged += 1
                    picks.append(None)
                    continue
                best = max(scored, key=lambda i: scores[i])
                worst = min(scored, key=lambda i: scores[i])
                if scores[best] - scores[worst] <= self.mc.margin:
                    ties += 1
                    picks.append(None)
                else:
                    picks.append((best, worst))
        made = sum(p is not None for p in picks)
        for name, value in (("made", made), ("ties", ties), ("unjudged", unjudged)):
            sums.add_scalar(f"pairs/{name}", float(value))
        return [
            [] if pick is None else [OnlinePair(
                samples[pick[0]].prompt_ids, samples[pick[0]].completion_ids, samples[pick[1]].completion_ids,
                f"prompt {items[p].index}", ref_chosen=refs[pick[0]] or 0.0, ref_rejected=refs[pick[1]] or 0.0,
            )]
            for p, pick in enumerate(picks)
        ]  # fmt: skip

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

    # ---- training on pairs
    def collate(self, items: list[OnlinePair]) -> dict:
        batch = collate_pairs(items, self.pad_id)
        batch["ref_logps"] = torch.tensor([x.ref_chosen for x in items] + [x.ref_rejected for x in items])
        batch["replayed"] = torch.tensor([not x.fresh for x in items])
        return batch

    def weight(self, item) -> float:
        return 1.0

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, module, batch):
        mask = batch["completion_mask"]
        sums = sequence_logprobs(module(batch["input_ids"], batch["attention_mask"], mask), mask)  # (2B,)
        n_tokens = mask[:, 1:].sum(-1).clamp(min=1)
        ref = batch["ref_logps"].to(sums.dtype) if self.spec.needs_reference else None
        losses, metrics = pair_loss(self.spec, self.loss_params, self.sft_weight, sums, n_tokens, ref)
        replayed = batch["replayed"]
        if replayed.any():  # the implicit reward of older pairs under today's policy: its drift
            metrics["replay/margins"] = metrics["rewards/margins"][replayed].detach()
            metrics["replay/accuracies"] = metrics["rewards/accuracies"][replayed]
        return losses, metrics

    # ---- checkpoint: the iteration's pending pairs and the pool, so a resume trains on the same pairs
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
