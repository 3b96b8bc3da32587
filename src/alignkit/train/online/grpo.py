"""GRPO, RLOO and REINFORCE++ on verifiable rewards or a reward model: one method, the advantage picked by name.

- ``grpo`` (Shao et al. 2024): A = (r - mean of the prompt's group) / std (group, batch, or none: Dr. GRPO);
- ``rloo`` (Ahmadian et al. 2024): A = r - mean of the *other* samples of the prompt;
- ``reinforce_pp`` (Hu 2025, REINFORCE++-baseline): A = r - group mean, then whitened over the whole batch.

All three train the objective ``method.policy_loss`` names in ``losses.POLICY_LOSSES``: by default the clipped
surrogate ``losses.clipped_policy_loss`` (one pass with one minibatch is plain
REINFORCE with a baseline: the ratio is 1), with the KL to the reference either per token in the loss (GRPO)
or per sequence in the reward (RLOO / REINFORCE++), and DAPO's clip-higher, dynamic sampling and overlong
handling as options.
"""

from __future__ import annotations

import torch

from alignkit.data import Sample
from alignkit.logprobs import shared_inputs
from alignkit.losses import POLICY_LOSSES
from alignkit.rl import ADVANTAGES, kl_estimate
from alignkit.train.distributed import all_reduce_sum
from alignkit.train.online.rollout import OnlineMethod
from alignkit.train.online.rollout_parts import correct_for_sampler


class GRPOMethod(OnlineMethod):
    groups_share_prompts = True

    def __init__(self, cfg, pad_id: int):
        super().__init__(cfg, pad_id)
        self.name = self.mc.resolved_advantage

    def shape_rewards(self, samples: list[Sample], rewards: list[float | None]) -> None:
        """Rewards onto samples; overlong completions masked or softly penalized (DAPO, Yu et al. 2025, eq. 13)."""
        super().shape_rewards(samples, rewards)
        mc, limit = self.mc, self.ro.max_new_tokens
        for s in samples:
            if not s.truncated or s.reward is None:
                continue
            if mc.overlong == "mask":
                s.weight = 0.0
        if mc.overlong == "penalty":  # a ramp from 0 to -penalty over the last overlong_buffer tokens
            start = limit - mc.overlong_buffer
            for s in samples:
                if s.reward is not None and len(s.completion_ids) > start:
                    s.reward -= mc.overlong_penalty * (len(s.completion_ids) - start) / mc.overlong_buffer

    def advantages(self, samples: list[Sample], n_prompts: int) -> None:
        mc, g = self.mc, self.ro.samples_per_prompt
        valid = torch.tensor([s.reward is not None for s in samples]).view(n_prompts, g)
        r = torch.tensor([s.reward if s.reward is not None else 0.0 for s in samples]).view(n_prompts, g)
        if mc.beta > 0 and mc.kl_in == "reward":  # r - beta * KL(pi_old || pi_ref) of the sequence
            kl = torch.tensor([float(kl_estimate(torch.tensor(s.sampler_logps), torch.tensor(s.ref_logps),
                                                 mc.kl_estimator).sum()) for s in samples])  # fmt: skip
            r = r - mc.beta * kl.view(n_prompts, g)
        adv = ADVANTAGES[self.name](r, valid, mc.scale_rewards, all_reduce_sum())
        for s, a in zip(samples, adv.reshape(-1).tolist()):
            s.advantages = [a]

    def loss(self, module, batch):
        """Per-completion losses ``(B,)``: the masked per-token clipped surrogate (+ beta * KL per token), summed
        over the completion and divided by its length (token_mean / sequence_mean; the loop's weights make
        token_mean a mean over all tokens of the step) or by max_new_tokens (constant, Dr. GRPO)."""
        mc = self.mc
        mask = batch["completion_mask"].float()
        shared = shared_inputs(batch) if "logp_target" in batch else None  # prefix-shared packed groups
        logps, entropy = module(
            batch["input_ids"], batch["attention_mask"], batch["completion_mask"], shared=shared,
            temperature=self.ro.temperature, entropy=True,
        )  # fmt: skip
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()
        token_losses, low, high = POLICY_LOSSES[mc.policy_loss](
            logps, old, batch["advantages"][:, None], mask, mc.clip_low, mc.clip_high
        )
        on = mask.bool()
        token_losses, metrics = correct_for_sampler(token_losses, old, batch["sampler_logps"], mask, mc)
        metrics |= {
            "clip/low": low[on].float(),
            "clip/high": high[on].float(),
            "entropy": entropy[on],
            "policy/approx_kl": (0.5 * (logps.detach() - old) ** 2)[on],
        }
        if self.pass_index == (0, 0):  # the first update trains the very policy that sampled
            metrics["logprobs/sampler_mismatch"] = (logps.detach() - batch["sampler_logps"]).abs()[on]
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
            kl = kl_estimate(logps, ref, mc.kl_estimator)
            if mc.kl_in == "loss":
                token_losses = token_losses + mc.beta * kl
            metrics["kl/k1"] = kl_estimate(logps.detach(), ref, "k1")[on]
            metrics["kl/k3"] = kl_estimate(logps.detach(), ref, "k3")[on]
            metrics["kl/sequence"] = (kl_estimate(logps.detach(), ref, "k1") * mask).sum(-1)
        n = mask.sum(-1)
        summed = (token_losses * mask).sum(-1)
        losses = summed / self.ro.max_new_tokens if mc.loss_aggregation == "constant" else summed / n.clamp(min=1)
        metrics["loss/policy"] = losses.detach()
        return losses, metrics
