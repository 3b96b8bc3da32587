"""What the rollout stage needs besides the loop itself: the sampler backend, the prefix-sharing probe, and the
reward metrics of a batch of samples (mean/std, lengths, pass@k of verifiers)."""

from __future__ import annotations

import math

import torch

from alignkit.data import Sample, collate_samples
from alignkit.generation.sampler import Sampler
from alignkit.logprobs import CompletionScorer, layouts_agree, shared_inputs, supports_prefix_sharing, unwrap_causal_lm
from alignkit.losses import rollout_correction_weights
from alignkit.models.attention import use_segmented_attention
from alignkit.stats import pass_at_k
from alignkit.train.metrics import MetricSums


def no_signal(rewards: list[float | None]) -> bool:
    """A group without reward variance (all its scored samples equal): it carries no learning signal."""
    return len({r for r in rewards if r is not None}) <= 1


def add_reward_metrics(sums: MetricSums, samples: list[Sample], per_function: dict, n_prompts: int, k: int) -> None:
    """Reward mean/std over scored samples, completion length, and pass@1 / pass@k of each verifier (a reward
    function whose values are all 0 or 1); ``samples`` hold ``k`` completions per prompt, in prompt order."""
    scored = [s.reward for s in samples if s.reward is not None]
    if scored:
        mean = sum(scored) / len(scored)
        sums.add_scalar("reward/mean", sum(scored), len(scored))
        sums.add_scalar("reward/std", math.sqrt(sum((r - mean) ** 2 for r in scored) / len(scored)))
    sums.add({"completion/length": torch.tensor([float(len(s.completion_ids)) for s in samples])})
    for name, values in per_function.items():
        if all(v in (0.0, 1.0, None) for v in values) and any(v is not None for v in values):
            correct = [[values[p * k + j] == 1.0 for j in range(k)] for p in range(n_prompts)]
            sums.add_scalar(f"pass@1/{name}", pass_at_k(correct, 1) * n_prompts, n_prompts)
            if k > 1:
                sums.add_scalar(f"pass@{k}/{name}", pass_at_k(correct, k) * n_prompts, n_prompts)


def make_sampler(model, tok, ro) -> Sampler:
    """The rollout's sampler: alignkit's on the live model, or vLLM's engine (GPU; weights pushed each step)."""
    if ro.backend == "vllm":
        from alignkit.generation.vllm_backend import VLLMSampler

        return VLLMSampler(model, tok, max_rows=ro.max_rows)
    return Sampler(model, tok, max_rows=ro.max_rows)


def grouped_layout_works(model, pad_id: int, log) -> bool:
    """Prefix sharing needs the fused head and an attention that takes a 4D mask (SDPA); the probe on two synthetic
    groups confirms the packed layout scores tokens as the padded one does (else the padded is used)."""
    if not (supports_prefix_sharing(model) and use_segmented_attention(model)):
        log("prefix sharing off: this model needs the padded layout (logit transform or attention without 4D masks)")
        return False
    vocab = unwrap_causal_lm(model).config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    p1, p2 = ids(5), ids(3)
    samples = [Sample(p, ids(n), [0.0] * n, "eos", "", 0, 0.0, [0.0]) for p, n in ((p1, 4), (p1, 6), (p2, 2), (p2, 5))]
    device = next(model.parameters()).device
    plain = {k: v.to(device) for k, v in collate_samples(samples, pad_id).items()}
    shared = {k: v.to(device) for k, v in collate_samples(samples, pad_id, shared=True).items()}
    scorer = CompletionScorer(model)
    return layouts_agree(
        model,
        lambda: scorer(plain["input_ids"], plain["attention_mask"], plain["completion_mask"]),
        lambda: scorer(shared["input_ids"], shared["attention_mask"], shared["completion_mask"],
                       shared=shared_inputs(shared)),
        "token log-probs",
        log,
    )  # fmt: skip


def correct_for_sampler(token_losses, trainer_logps, sampler_logps, mask, mc) -> tuple[torch.Tensor, dict]:
    """The measured sampler/trainer log-prob gap (``rollout/logprob_gap``: mean |log pi_trainer - log pi_sampler|
    over the model's tokens) and, with ``method.rollout_correction``, the per-token losses ``(B, T)`` times the
    correction weights (``losses.rollout_correction_weights``)."""
    on = mask.bool()
    metrics = {"rollout/logprob_gap": (trainer_logps.detach() - sampler_logps).abs()[on]}
    if mc.rollout_correction == "none":
        return token_losses, metrics
    weights = rollout_correction_weights(trainer_logps, sampler_logps, mask, mc.rollout_correction,
                                         mc.rollout_correction_level, mc.rollout_correction_threshold)  # fmt: skip
    metrics["rollout/correction_weight"] = weights[on]
    metrics["rollout/correction_dropped"] = (weights[on] == 0).float()
    return token_losses * weights, metrics
