"""The rollout phase of the one training loop: prompts -> samples -> rewards -> advantages -> optimizer passes.

``OnlineMethod`` is a ``Method`` of ``train.loop.fit`` whose ``updates`` first samples completions from the live
policy (``generation.Sampler``), scores them (``RewardSources``: reward functions in worker processes and/or a
reward model), lets the subclass turn rewards into advantages (GRPO/RLOO: per sequence; PPO: per token with a
value model), attaches the log-probs the loss needs (pi_old, reference), and then yields the minibatches of
``method.iterations`` passes. Everything else (optimizer, accumulation, clipping, checkpoints, resume, NaN stop,
metrics, trackers, early stopping, processes) is the loop's.

Exactness: prompt i of a step samples with a seed derived from (train.seed, step, i's index in the data), so the
samples of a step do not depend on the process count or on a resume. Each process takes every world-th prompt
of the step; minibatch m of a pass is the m-th contiguous block of every process's groups, which is the same set
of prompts for any number of processes.
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np
import torch

from alignkit.data import Sample, collate_samples, pad_sequences, to_prompt, tokenize_prompts
from alignkit.data.collate import mask_observations
from alignkit.errors import ConfigError
from alignkit.generation.sampler import Completion, SamplingParams
from alignkit.logprobs import (
    CompletionScorer,
    token_logprobs,
)
from alignkit.models.load import disable_dropout
from alignkit.rewards.episode_runner import EPISODE_COUNTS
from alignkit.train.method import Method
from alignkit.train.metrics import MetricSums
from alignkit.train.online.reward_sources import RewardSources
from alignkit.train.online.rollout_parts import add_reward_metrics, grouped_layout_works, make_sampler, no_signal
from alignkit.train.online.seeds import EVAL, PASS_ORDER, REFILL, sample_seed


class OnlineMethod(Method):
    """Shared by GRPO/RLOO and PPO. Subclasses implement ``advantages(samples, groups)`` and ``loss``."""

    online = True
    groups_share_prompts = False  # the loss runs on the packed prefix-shared layout (GRPO: G completions per prompt)
    shared = False

    def __init__(self, cfg, pad_id: int):
        self.cfg, self.mc, self.ro, self.pad_id = cfg, cfg.method, cfg.rollout, pad_id
        self.params = SamplingParams(
            n=self.ro.samples_per_prompt, max_new_tokens=self.ro.max_new_tokens, temperature=self.ro.temperature,
            top_p=self.ro.top_p, top_k=self.ro.top_k, min_p=self.ro.min_p, stop=tuple(self.ro.stop),
        )  # fmt: skip
        self.sampler = self.rewards = self.reference = self.accelerator = self.gold = self.episodes = None
        self.episode_metrics: dict[str, list[float]] = {}
        self.pass_index = (0, 0)  # (iteration, minibatch) of the update being trained

    def needs_reference(self) -> bool:
        """Whether the loss regularizes toward a reference (the initial policy, or method.ref_model)."""
        return self.mc.beta > 0

    # ---- data: prompt-only records -> TokenizedPrompt items
    def convert(self, record, source):
        return to_prompt(record, source, self.cfg.data.prompt_field, self.cfg.data.prompt_template)

    def tokenize(self, examples, tok, max_length, max_prompt_length, keep, policy):
        return tokenize_prompts(examples, tok, self.cfg.max_prompt_length, keep, policy, self.ro.chat)

    def length(self, item) -> int:
        return len(item.prompt_ids)

    # ---- batch shape
    def global_batch(self, tc, world: int) -> int:
        p, m = self.ro.prompts_per_step, self.mc.minibatches
        if p % (world * m):
            raise ConfigError(
                f"rollout.prompts_per_step={p} does not split into {world} process(es) x method.minibatches={m}. "
                f"Fix: use a multiple of {world * m} prompts per step"
            )
        return p

    def optimizer_steps_per_step(self) -> int:
        return self.mc.iterations * self.mc.minibatches

    # ---- setup
    def wrap(self, model):
        return CompletionScorer(model, self.cfg.train.logprob_chunk_size)

    def setup(self, model, train_items, eval_items, accelerator):
        from alignkit.data import Tokenizer
        from alignkit.models import load_tokenizer

        self.accelerator, self.train_items = accelerator, train_items
        disable_dropout(model)  # the sampler's and the trainer's log-probs must be of the same policy
        tc = self.cfg.train
        self.shared = (
            self.groups_share_prompts
            and tc.prefix_sharing
            and tc.packing
            and grouped_layout_works(model, self.pad_id, self.log)
        )
        self.tok = Tokenizer(load_tokenizer(self.cfg.model.name, self.cfg.model.trust_remote_code))
        self.sampler = make_sampler(model, self.tok, self.ro)
        self.rewards = RewardSources(self.mc, accelerator.device, self.log)
        self.episodes = None
        if self.ro.environment:
            from alignkit.train.online.environment import EpisodeRollout

            self.episodes = EpisodeRollout(self.ro, self.tok, self.sampler)
        if getattr(self.mc, "gold_reward_model", None):
            from alignkit.reward_model import RewardModel

            if self.mc.gold_reward_model == self.mc.reward_model:
                self.log("warning: method.gold_reward_model is method.reward_model, the reward trained against; "
                         "eval/gold/reward then measures the proxy, not a held-out gold reward")  # fmt: skip
            self.gold = RewardModel.load(self.mc.gold_reward_model, device=str(accelerator.device))
        if self.needs_reference():
            from alignkit.train.reference import Reference

            self.reference = Reference(model, "live", self.mc.ref_model, accelerator, self.cfg.model.trust_remote_code)
        world = accelerator.num_processes
        per_process = self.ro.prompts_per_step // world
        completions = per_process * self.ro.samples_per_prompt // self.mc.minibatches
        micro = math.ceil(completions / self.cfg.train.batch_size)
        self.log(
            f"rollout: {self.ro.prompts_per_step} prompts x {self.ro.samples_per_prompt} samples = "
            f"{self.ro.prompts_per_step * self.ro.samples_per_prompt} completions/step; {self.mc.iterations} "
            f"pass(es) x {self.mc.minibatches} minibatch(es); each optimizer step: {completions} completions per "
            f"process = {micro} micro-batch(es) of <= {self.cfg.train.batch_size} (train.batch_size)"
        )
        return train_items, eval_items

    # ---- the rollout
    def updates(self, module, items, step, sums: MetricSums) -> Iterator[list]:
        samples = self.rollout(module, items, step, sums)
        groups = len(items) // self.mc.minibatches
        g = self.ro.samples_per_prompt
        blocks = [samples[m * groups * g : (m + 1) * groups * g] for m in range(self.mc.minibatches)]
        t0 = time.perf_counter()
        for it in range(self.mc.iterations):
            order = list(range(len(blocks)))
            if it > 0:  # later passes visit the minibatches in another (seeded, process-independent) order
                rng = np.random.default_rng(sample_seed(self.cfg.train.seed, step, 0, it, PASS_ORDER))
                order = rng.permutation(len(blocks)).tolist()
            for m in order:
                self.pass_index = (it, m)
                yield blocks[m]
        sums.add_scalar("time/train", time.perf_counter() - t0)

    def rollout(self, module, items, step, sums: MetricSums) -> list[Sample]:
        """This process's prompts of ``step`` -> scored samples with advantages, old and reference log-probs."""
        policy = self.accelerator.unwrap_model(module).model
        times = {"generate": 0.0, "reward": 0.0, "reference": 0.0}
        items, samples, rewards, reward_metrics, per_function = self.generate_and_score(items, step, times, sums)
        self.shape_rewards(samples, rewards)
        t0 = time.perf_counter()
        self.attach_logprobs(policy, samples)
        times["reference"] = time.perf_counter() - t0
        self.advantages(samples, len(items))
        self.add_rollout_metrics(sums, items, samples, per_function, reward_metrics)
        weights = self.episode_metrics.pop("episodes", [])
        for name, values in self.episode_metrics.items():  # over every episode sampled in the step's rounds:
            if name in EPISODE_COUNTS:  # counts add up, shares and means are weighted by the round's episodes
                sums.add_scalar(name, sum(values))
            else:
                sums.add_scalar(name, sum(v * w for v, w in zip(values, weights)) / max(1, sum(weights)))
        self.episode_metrics = {}
        for name in ("generate", "reward", "reference"):
            sums.add_scalar(f"time/{name}", times[name])
        sums.add_scalar("generation/tokens_per_second", times["tokens"] / max(times["generate"], 1e-9))
        return samples

    def generate_and_score(self, items, step, times: dict, sums: MetricSums):
        """Sample ``samples_per_prompt`` completions per prompt and score them. With ``method.dynamic_sampling``
        (DAPO), groups whose rewards are all equal carry no signal: their prompts are replaced by others drawn from
        the training set (seeded by step, round and process) and sampled, for up to ``max_resample_rounds``."""
        g = self.ro.samples_per_prompt
        items = list(items)
        samples, rewards, metrics, per_function = self._sample_and_score(items, step, 0, times)
        if getattr(self.mc, "dynamic_sampling", False):
            used, replaced = {x.index for x in items}, 0
            for round_ in range(1, self.mc.max_resample_rounds + 1):
                flat = [p for p in range(len(items)) if no_signal(rewards[p * g : (p + 1) * g])]
                pool = [x for x in self.train_items if x.index not in used]
                if not flat or not pool:
                    break
                rank = self.accelerator.process_index
                rng = np.random.default_rng(sample_seed(self.cfg.train.seed, step, rank, round_, REFILL))
                fresh = [pool[i] for i in rng.choice(len(pool), min(len(flat), len(pool)), replace=False)]
                used |= {x.index for x in fresh}
                new_samples, new_rewards, new_metrics, new_per_function = self._sample_and_score(fresh, step, round_,
                                                                                                 times)  # fmt: skip
                for key in metrics:  # infrastructure counts add up over rounds
                    if key.endswith(("/none", "/timeouts", "/errors")):
                        metrics[key] += new_metrics.get(key, 0.0)
                for k, (p, x) in enumerate(zip(flat, fresh)):
                    items[p] = x
                    block, new = slice(p * g, (p + 1) * g), slice(k * g, (k + 1) * g)
                    samples[block], rewards[block] = new_samples[new], new_rewards[new]
                    for s in samples[block]:
                        s.group = p
                    for name in per_function:
                        per_function[name][block] = new_per_function[name][new]
                    replaced += 1
            sums.add_scalar("groups/resampled", float(replaced))
        return items, samples, rewards, metrics, per_function

    def _sample_and_score(self, items, step, round_, times: dict):
        t0 = time.perf_counter()
        seeds = [sample_seed(self.cfg.train.seed, step, x.index, round_) for x in items]
        if self.episodes is not None:
            samples, rewards, metrics, per_function, episode_metrics = self._episodes_and_score(
                items, seeds, self.params, times, t0
            )
            for name, value in episode_metrics.items():  # per round; rollout() sums counts and averages shares
                self.episode_metrics.setdefault(name, []).append(value)
            return samples, rewards, metrics, per_function
        with self.accelerator.autocast():
            completions = self.sampler.sample([x.prompt_ids for x in items], self.params, seeds)
        times["generate"] += time.perf_counter() - t0
        times["tokens"] = times.get("tokens", 0) + self.sampler.stats.tokens
        samples = self.to_samples(items, completions)
        t0 = time.perf_counter()
        rewards, metrics, per_function = self.score(items, samples)
        times["reward"] += time.perf_counter() - t0
        return samples, list(rewards), metrics, {k: list(v) for k, v in per_function.items()}

    def _episodes_and_score(self, items, seeds, params: SamplingParams, times: dict, t0: float):
        """Multi-turn episodes with the environment (its rewards summed per episode), plus the reward functions /
        reward model on each episode's final message when configured -> (samples, rewards, reward function
        metrics, per-source rewards, episode metrics)."""
        with self.accelerator.autocast():
            samples, rewards, per_function, episode_metrics = self.episodes.run(items, params, seeds)
        times["generate"] += time.perf_counter() - t0
        times["tokens"] = times.get("tokens", 0) + self.sampler.stats.tokens
        per_function = {f"env/{k}": v for k, v in per_function.items()}
        reward_metrics: dict[str, float] = {}
        if self.rewards.runner is not None or self.rewards.rm is not None:
            t0 = time.perf_counter()
            finals = [Sample(s.prompt_ids, s.completion_ids, [], s.finish_reason, text, s.group)
                      for s, text in zip(samples, self.episodes.final_text)]  # fmt: skip
            extra, reward_metrics, more = self.score(items, finals)
            rewards = [None if e is None else r + e for r, e in zip(rewards, extra)]
            per_function.update(more)
            times["reward"] += time.perf_counter() - t0
        return samples, rewards, reward_metrics, per_function, episode_metrics

    def to_samples(self, items, completions: list[list[Completion]]) -> list[Sample]:
        return [
            Sample(x.prompt_ids, c.token_ids, c.logprobs, c.finish_reason, c.text, g)
            for g, (x, group) in enumerate(zip(items, completions))
            for c in group
        ]

    def score(self, items, samples: list[Sample]):
        """Rewards of samples (``sample.group`` indexes ``items``) with every record field passed as a column."""
        prompts = [items[s.group].prompt for s in samples]
        names = sorted({k for x in items for k in x.columns})
        columns = {k: [items[s.group].columns.get(k) for s in samples] for k in names}
        return self.rewards(prompts, [s.text for s in samples], columns)

    def shape_rewards(self, samples: list[Sample], rewards: list[float | None]) -> None:
        """Attach rewards; a sample without one gets weight 0 (masked, counted in ``rewards/masked``)."""
        for s, r in zip(samples, rewards):
            s.reward = r
            if r is None:
                s.weight = 0.0

    @torch.no_grad()
    def attach_logprobs(self, policy, samples: list[Sample]) -> None:
        """pi_old (when the experience is trained on more than once) and the reference's per-token log-probs."""
        several = self.mc.iterations * self.mc.minibatches > 1
        if several and self.mc.old_logprobs == "sampler":
            for s in samples:
                s.old_logps = list(s.sampler_logps)
        elif several:
            for s, lp in zip(samples, self.forward_logps(policy, samples, adapter=True)):
                s.old_logps = lp
        if self.reference is not None:
            for s, lp in zip(samples, self.forward_logps(None, samples, adapter=False)):
                s.ref_logps = lp

    def forward_logps(self, policy, samples: list[Sample], adapter: bool) -> list[list[float]]:
        """Per-token log-probs of every sample's completion under the policy (``adapter``) or the reference."""
        out: list[list[float] | None] = [None] * len(samples)
        order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].completion_ids))
        bs = self.cfg.train.eval_batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            chunk = [samples[i] for i in idx]
            batch = pad_sequences([x.prompt_ids for x in chunk], [x.completion_ids for x in chunk], self.pad_id)
            mask_observations(batch["completion_mask"], chunk)  # observation tokens: not scored (0)
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            with self.accelerator.autocast():
                if adapter:
                    was = policy.training
                    policy.eval()
                    lp = token_logprobs(
                        policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                        chunk_size=self.cfg.train.logprob_chunk_size, temperature=self.ro.temperature,
                    )  # fmt: skip
                    policy.train(was)
                else:
                    lp = self.reference.token_logps(batch, self.ro.temperature)
            for j, i in enumerate(idx):
                start = len(samples[i].prompt_ids)
                out[i] = lp[j, start : start + len(samples[i].completion_ids)].tolist()
        return out

    def advantages(self, samples: list[Sample], n_prompts: int) -> None:
        raise NotImplementedError

    def add_rollout_metrics(self, sums, items, samples, per_function, reward_metrics) -> None:
        """Reward functions' counts (none, timeouts, errors) as the runner saw them; means and the masked count
        over the samples trained on."""
        for name, value in reward_metrics.items():
            if name.endswith(("/none", "/timeouts", "/errors")):
                sums.add_scalar(name, value)
        for name, values in per_function.items():
            scored = [v for v in values if v is not None]
            if scored:
                mean = sum(scored) / len(scored)
                sums.add_scalar(f"rewards/{name}/mean", mean)
                sums.add_scalar(f"rewards/{name}/std", math.sqrt(sum((v - mean) ** 2 for v in scored) / len(scored)))
        sums.add_scalar("rewards/masked", float(sum(s.reward is None for s in samples)))
        add_reward_metrics(sums, samples, per_function, len(items), self.ro.samples_per_prompt)
        sums.add({"completion/truncated": torch.tensor([s.truncated for s in samples], dtype=torch.float32)})
        sums.add_scalar("completion/max_length", float(max(len(s.completion_ids) for s in samples)))
        g = self.ro.samples_per_prompt
        if g > 1:  # a group of one has no variance to speak of
            zero_var = [no_signal([s.reward for s in samples[p * g : (p + 1) * g]]) for p in range(len(items))]
            sums.add({"groups/zero_variance": torch.tensor(zero_var, dtype=torch.float32)})

    # ---- training-side plumbing shared by the subclasses
    def collate(self, items: list[Sample]) -> dict:
        return collate_samples(items, self.pad_id, self.shared)

    def weight(self, item: Sample) -> float:
        """``token_mean`` counts every completion token alike; otherwise every completion alike."""
        if getattr(self.mc, "loss_aggregation", "token_mean") == "token_mean":
            return item.weight * item.action_tokens
        return item.weight

    def tokens(self, batch: dict) -> int:
        """Tokens of the prompt + completion rows trained on (a shared prompt counted once per completion)."""
        if "logical_tokens" in batch:
            return int(batch["logical_tokens"])
        return int(batch["attention_mask"].sum())

    # ---- evaluation: sample the eval prompts, score them
    @torch.no_grad()
    def evaluate(self, module, items: list, batch_size: int, accelerator) -> dict[str, float]:
        mine = items[accelerator.process_index :: accelerator.num_processes]
        k = self.ro.eval_samples
        params = SamplingParams(
            n=k, max_new_tokens=self.ro.max_new_tokens, temperature=self.ro.eval_temperature, top_p=self.ro.top_p,
            top_k=self.ro.top_k, min_p=self.ro.min_p, stop=tuple(self.ro.stop),
        )  # fmt: skip
        sums = MetricSums()
        seeds = [sample_seed(self.cfg.train.seed, 0, x.index, stream=EVAL) for x in mine]
        if self.episodes is not None:  # a tool-using policy is evaluated the way it is trained: in its environment
            times = {"generate": 0.0, "reward": 0.0}
            samples, rewards, _, per_function, episode_metrics = self._episodes_and_score(
                mine, seeds, params, times, time.perf_counter()
            )
            for name, value in episode_metrics.items():
                if name != "episodes":
                    sums.add_scalar(name, value)
        else:
            with accelerator.autocast():
                completions = self.sampler.sample([x.prompt_ids for x in mine], params, seeds)
            samples = [
                Sample(x.prompt_ids, c.token_ids, c.logprobs, c.finish_reason, c.text, p)
                for p, (x, group) in enumerate(zip(mine, completions))
                for c in group
            ]
            rewards, _, per_function = self.score(mine, samples)
        for s, r in zip(samples, rewards):
            s.reward = r
        add_reward_metrics(sums, samples, per_function, len(mine), k)
        if self.gold is not None and samples:  # the held-out gold reward: scored here only, never trained against
            prompts, texts = [mine[s.group].prompt for s in samples], [s.text for s in samples]
            gold = self.gold.reward(prompts, texts, "mean", batch_size=self.cfg.train.eval_batch_size)[0]
            sums.add_scalar("gold/reward", float(gold.sum()), float(gold.numel()))  # mean over all processes' samples
        return sums.reduce(accelerator)

    def finish(self, module, train_items, eval_items, eval_metrics) -> dict[str, str]:
        if self.rewards is not None:
            self.rewards.close()
        if self.episodes is not None:
            self.episodes.close()
        return {}
