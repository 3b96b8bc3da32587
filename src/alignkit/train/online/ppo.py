"""PPO-RLHF (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022) as a method of the one loop.

Rollout: sample completions -> score them (reward model and/or reward functions) -> per-token rewards
r_t = -beta * (log pi_old(y_t) - log pi_ref(y_t)) plus the score on the last token -> values of the rollout
policy's states -> GAE(gamma, lambda) advantages (whitened over the step) and returns. Update: the clipped
surrogate on the advantages plus vf_coef x the clipped value loss, for ``method.iterations`` PPO epochs of
``method.minibatches`` minibatches. After each step the adaptive controller moves beta toward ``kl_target`` and the
health monitor (``rl.health``) checks reward spikes, KL, the losses, entropy and completion length.

The value function is a separate model (a ``*ForSequenceClassification`` started from the reward model, its head
applied at every position) or a linear head on the policy's own trunk (``method.value=shared``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from alignkit.data import Sample, collate_samples
from alignkit.errors import UserError
from alignkit.logprobs import hidden_token_logprobs, supports_fused_head, unwrap_causal_lm
from alignkit.losses import POLICY_LOSSES, clipped_value_loss
from alignkit.rl import AdaptiveKLController, FixedKLController, HealthMonitor, gae, moments, whiten
from alignkit.train.distributed import all_reduce_sum
from alignkit.train.metrics import MetricSums
from alignkit.train.online.rollout import OnlineMethod
from alignkit.train.online.rollout_parts import correct_for_sampler


class PolicyAndValue(nn.Module):
    """The module the loop trains: the policy (``.model``, as everywhere) and the value function.

    ``forward(input_ids, attention_mask, completion_mask, temperature)`` -> per-token log-probs, entropies and
    values, each ``(B, T)``; the value at a completion token's position is the value of the state before it
    (the hidden state that predicts the token), as the log-prob is."""

    def __init__(self, model, value_model=None, chunk_size: int = 1024):
        super().__init__()
        self.model, self.value_model, self.chunk_size = model, value_model, chunk_size
        if value_model is None:  # shared trunk: a new linear head on the policy's hidden states
            hidden = unwrap_causal_lm(model).config.hidden_size
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, completion_mask, temperature: float = 1.0):
        lm = unwrap_causal_lm(self.model)
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logps, entropy = hidden_token_logprobs(
            lm, hidden, input_ids, completion_mask, self.chunk_size, temperature, entropy=True
        )
        return logps, entropy, self._values(hidden, input_ids, attention_mask)

    def values(self, input_ids, attention_mask) -> torch.Tensor:
        """Values ``(B, T)`` alone (rollout time, no gradient needed by the caller)."""
        hidden = None
        if self.value_model is None:
            lm = unwrap_causal_lm(self.model)
            hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = hidden.last_hidden_state
        return self._values(hidden, input_ids, attention_mask)

    def _values(self, policy_hidden, input_ids, attention_mask) -> torch.Tensor:
        if self.value_model is None:
            v = self.value_head(policy_hidden).squeeze(-1)
        else:
            from alignkit.reward_model.model import classifier_of, head_of

            clf = classifier_of(self.value_model)
            trunk = getattr(clf, clf.base_model_prefix)
            h = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            v = head_of(self.value_model)(h).squeeze(-1)
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        out[:, 1:] = v[:, :-1].float()
        return out


def load_value_model(path: str | None, policy_name: str | None, lora, tokenizer, trust_remote_code: bool = False):
    """A trainable 1-output ``*ForSequenceClassification``: from a reward model dir (its trunk and head; an
    adapter is merged, K heads are averaged into one, an ensemble gives its first member) or from a causal LM
    with a new zero head. With ``lora`` the value model trains a LoRA adapter (head in full), like the policy."""
    from alignkit.models.load import apply_lora
    from alignkit.reward_model.model import REWARD_INFO, head_of, load_classifier, member_dirs, read_info

    source = member_dirs(path)[0] if path else None
    if source is not None and (source / REWARD_INFO).is_file():
        info = read_info(source)
        if (source / "adapter_config.json").is_file():
            from peft import PeftModel

            base = load_classifier(info["base_model"], info["heads"], tokenizer, trust_remote_code)
            model = PeftModel.from_pretrained(base, str(source)).merge_and_unload()
        else:
            model = load_classifier(str(source), info["heads"], tokenizer, trust_remote_code)
        base_name = info.get("base_model", str(source))
    else:
        base_name = str(source) if source is not None else policy_name
        model = load_classifier(base_name, 1, tokenizer, trust_remote_code)
        nn.init.zeros_(head_of(model).weight)
    head = head_of(model)
    if head.out_features != 1:  # K heads -> their mean: one value head that starts as the ensemble's mean score
        merged = nn.Linear(head.in_features, 1, bias=head.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(head.weight.mean(0, keepdim=True))
            if head.bias is not None:
                merged.bias.copy_(head.bias.mean().view(1))
        for name in ("score", "classifier"):
            if getattr(model, name, None) is head:
                setattr(model, name, merged)
        model.config.num_labels = 1
    model.requires_grad_(True)
    if lora is not None:
        model = apply_lora(model, lora, base_name, task_type="SEQ_CLS")
    return model


class PPOMethod(OnlineMethod):
    name = "ppo"

    def __init__(self, cfg, pad_id: int):
        super().__init__(cfg, pad_id)
        mc = self.mc
        self.kl = (
            AdaptiveKLController(mc.beta, mc.kl_target, mc.kl_horizon) if mc.kl_target else FixedKLController(mc.beta)
        )
        self.health = HealthMonitor(kl_target=mc.kl_target)

    def wrap(self, model):
        if self.mc.value == "shared" and not supports_fused_head(model):
            raise UserError("method.value=shared needs a model whose logits are a plain linear head of its hidden "
                            "states. Fix: use method.value=separate")  # fmt: skip
        value_model = None
        if self.mc.value == "separate":
            from alignkit.models import load_tokenizer

            tokenizer = load_tokenizer(self.cfg.model.name, self.cfg.model.trust_remote_code)
            value_model = load_value_model(
                self.mc.value_model or self.mc.reward_model, self.cfg.model.name, self.cfg.lora, tokenizer,
                self.cfg.model.trust_remote_code,
            )  # fmt: skip
            value_model.to(next(model.parameters()).device)
        self.module = PolicyAndValue(model, value_model, self.cfg.train.logprob_chunk_size)
        return self.module

    def setup(self, model, train_items, eval_items, accelerator):
        if self.mc.beta == 0 and self.mc.kl_target:
            self.log("note: method.beta=0 with an adaptive KL target: the controller can only scale 0; "
                     "the KL penalty stays off")  # fmt: skip
        return super().setup(model, train_items, eval_items, accelerator)

    @torch.no_grad()
    def attach_logprobs(self, policy, samples: list[Sample]) -> None:
        """pi_old and the reference as usual, plus the rollout-time values of every completion token."""
        super().attach_logprobs(policy, samples)
        if samples[0].old_logps is None:  # one pass, one minibatch: pi_old is the policy itself; PPO still needs it
            for s, lp in zip(samples, self.forward_logps(policy, samples, adapter=True)):
                s.old_logps = lp
        bs = self.cfg.train.eval_batch_size
        for start in range(0, len(samples), bs):
            chunk = samples[start : start + bs]
            batch = {k: v.to(self.accelerator.device) for k, v in collate_samples(chunk, self.pad_id).items()}
            was = self.module.training
            self.module.eval()
            with self.accelerator.autocast():
                values = self.module.values(batch["input_ids"], batch["attention_mask"])
            self.module.train(was)
            for s, row in zip(chunk, values):
                p = len(s.prompt_ids)
                s.values = row[p : p + len(s.completion_ids)].float().tolist()

    def advantages(self, samples: list[Sample], n_prompts: int) -> None:
        """Per-token rewards (KL penalty + score at the end), GAE, whitening over all processes' tokens. In a
        multi-turn episode the time steps are the model's own tokens: observation tokens are skipped (GAE runs
        over the model's tokens back to back) and get advantage and return 0."""
        mc = self.mc
        steps = [_action_positions(s) for s in samples]
        shape = (len(samples), max(len(p) for p in steps))
        rewards, values, mask = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
        kl_seq = []
        for i, (s, pos) in enumerate(zip(samples, steps)):
            n = len(pos)
            mask[i, :n] = 1.0 if s.reward is not None else 0.0
            values[i, :n] = torch.tensor(s.values)[pos]
            kl = torch.zeros(n)
            if s.ref_logps is not None:  # k1 per token (Ziegler et al.)
                kl = torch.tensor(s.old_logps)[pos] - torch.tensor(s.ref_logps)[pos]
            rewards[i, :n] = -self.kl.value * kl
            if s.reward is not None and n:
                rewards[i, n - 1] += s.reward
            kl_seq.append(float(kl.sum()))
        adv, returns = gae(rewards, values, mask, mc.gamma, mc.lam)
        if mc.whiten_advantages:
            adv = whiten(adv, mask.bool(), stats=moments(adv, mask.bool(), all_reduce_sum()))
        for i, (s, pos) in enumerate(zip(samples, steps)):
            full_adv, full_ret = torch.zeros(len(s.completion_ids)), torch.zeros(len(s.completion_ids))
            full_adv[pos], full_ret[pos] = adv[i, : len(pos)], returns[i, : len(pos)]
            s.advantages, s.returns = full_adv.tolist(), full_ret.tolist()
        valid = mask.bool()
        self._rollout_stats = {
            "kl/sequence": torch.tensor(kl_seq),
            "value/explained_variance": _explained_variance(values[valid], returns[valid]),
            "value/mean": values[valid].mean() if valid.any() else torch.tensor(0.0),
            "returns/mean": returns[valid].mean() if valid.any() else torch.tensor(0.0),
        }

    def add_rollout_metrics(self, sums: MetricSums, items, samples, per_function, reward_metrics) -> None:
        super().add_rollout_metrics(sums, items, samples, per_function, reward_metrics)
        stats = self._rollout_stats
        sums.add({"kl/sequence": stats["kl/sequence"]})
        for name in ("value/explained_variance", "value/mean", "returns/mean"):
            sums.add_scalar(name, float(stats[name]))
        sums.add_scalar("kl/coef", self.kl.value)

    def weight(self, item: Sample) -> float:
        return item.weight * item.action_tokens  # every token the model generated in the step counts alike

    def loss(self, module, batch):
        mc = self.mc
        mask = batch["completion_mask"].float()
        on = mask.bool()
        logps, entropy, values = module(
            batch["input_ids"], batch["attention_mask"], batch["completion_mask"], self.ro.temperature
        )
        objective = POLICY_LOSSES[mc.policy_loss]
        pg, low, high = objective(logps, batch["old_logps"], batch["advantages"], mask, mc.clip_low, mc.clip_high)
        pg, metrics = correct_for_sampler(pg, batch["old_logps"], batch["sampler_logps"], mask, mc)
        vf = clipped_value_loss(values, batch["values"], batch["returns"], mc.value_clip)
        n = mask.sum(-1).clamp(min=1)
        pg_seq, vf_seq = (pg * mask).sum(-1) / n, (vf * mask).sum(-1) / n
        metrics |= {
            "loss/policy": pg_seq.detach(),
            "loss/value": vf_seq.detach(),
            "clip/low": low[on].float(),
            "clip/high": high[on].float(),
            "entropy": entropy[on],
            "policy/approx_kl": (0.5 * (logps.detach() - batch["old_logps"]) ** 2)[on],
        }
        if mc.value_clip is not None:
            clipped = (values.detach() - batch["values"]).abs() > mc.value_clip
            metrics["value/clip_fraction"] = clipped[on].float()
        if self.pass_index == (0, 0):
            metrics["logprobs/sampler_mismatch"] = (logps.detach() - batch["sampler_logps"]).abs()[on]
        return pg_seq + mc.vf_coef * vf_seq, metrics

    def end_step(self, metrics: dict[str, float]) -> dict[str, float]:
        """The adaptive KL controller sees the step's KL; the health monitor checks the step (every process gets
        the same reduced metrics, so beta stays the same everywhere)."""
        n = self.ro.prompts_per_step * self.ro.samples_per_prompt
        if "kl/sequence" in metrics:
            self.kl.update(metrics["kl/sequence"], n)
        flags = self.health.check(metrics)
        for warning in self.health.warnings:
            self.log(f"warning: PPO health: {warning}")
        return {**flags, "kl/coef_next": self.kl.value}

    def state_dict(self) -> dict:
        return {"kl": self.kl.state_dict(), "health": self.health.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "kl" in state:
            self.kl.load_state_dict(state["kl"])
        if "health" in state:
            self.health.load_state_dict(state["health"])

    def finish(self, module, train_items, eval_items, eval_metrics) -> dict[str, str]:
        """Save the value function next to the model (``output_dir/value``)."""
        out = Path(self.cfg.train.output_dir) / "value"
        out.mkdir(parents=True, exist_ok=True)
        if module.value_model is not None:
            extra = {"save_embedding_layers": False} if hasattr(module.value_model, "peft_config") else {}
            module.value_model.save_pretrained(out, safe_serialization=True, **extra)  # no hub lookup
        else:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in module.value_head.state_dict().items()},
                      str(out / "value_head.safetensors"))  # fmt: skip
        super().finish(module, train_items, eval_items, eval_metrics)
        return {"alignkit_ppo.json": json.dumps({"kl_coef": self.kl.value, "value": self.mc.value}, indent=1) + "\n"}


def _action_positions(s: Sample) -> torch.Tensor:
    """Indices ``(A,)`` of the model's own tokens in a sample's completion (all of them in a single-turn sample)."""
    if s.action_mask is None:
        return torch.arange(len(s.completion_ids))
    return torch.tensor([j for j, m in enumerate(s.action_mask) if m], dtype=torch.long)


def _explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R): how much of the returns the value function explains (1 = all, <= 0 = none)."""
    if returns.numel() < 2 or returns.var() == 0:
        return torch.tensor(0.0)
    return 1 - (returns - values).var() / returns.var()
