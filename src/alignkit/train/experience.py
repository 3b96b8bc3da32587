"""Experience of the online methods: one sampled completion (``Sample``) with what its update needs, the seeds that
make sampling independent of batching, and the batches the loss sees (padded, or prefix-shared and packed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from alignkit.data import pad_sequences
from alignkit.data.collate import collate_groups_shared
from alignkit.logprobs import CompletionScorer, shared_inputs, supports_prefix_sharing, unwrap_causal_lm
from alignkit.models.attention import use_segmented_attention


@dataclass
class Sample:
    """One sampled completion of one prompt and what the update needs. Per-token lists are ``(L,)``, aligned with
    ``completion_ids``; ``advantages`` is one value per sequence (GRPO/RLOO) or per token (PPO)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logps: list[float]
    finish_reason: str
    text: str
    group: int  # the prompt's position among this process's prompts of the step
    reward: float | None = None
    advantages: list[float] = field(default_factory=list)
    old_logps: list[float] | None = None
    ref_logps: list[float] | None = None
    values: list[float] | None = None
    returns: list[float] | None = None
    weight: float = 1.0  # 0: left out of the loss (no reward, or a masked overlong completion)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


SAMPLING, PASS_ORDER, REFILL, EVAL = range(4)  # independent random streams


def sample_seed(seed: int, step: int, index: int, round_: int = 0, stream: int = SAMPLING) -> int:
    """A seed that depends only on what it is for: the samples of prompt ``index`` (its position in the data set)
    at ``step`` (refill ``round_``), so a step's samples do not depend on batching, processes or resumes."""
    return int(np.random.SeedSequence([stream, seed, step, index, round_]).generate_state(1)[0])


def collate_samples(samples: list[Sample], pad_id: int, shared: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion rows ``(B, T)`` (``pad_sequences``) plus the per-token values of the
    samples placed at their completion positions (``old_logps``, ``ref_logps``, ``sampler_logps``, and for PPO
    ``values``/``returns``/``advantages``), and per-sequence ``advantages`` ``(B,)`` when they are scalars. With
    ``shared``, ``input_ids``/``attention_mask`` are instead the packed prefix-shared row of
    ``collate_groups_shared`` (plus its ``position_ids``, ``segment_lengths``, ``logp_*``, ``logical_tokens``)."""
    batch = pad_sequences([s.prompt_ids for s in samples], [s.completion_ids for s in samples], pad_id)
    shape = batch["input_ids"].shape

    def per_token(name: str) -> torch.Tensor:
        out = torch.zeros(shape, dtype=torch.float32)
        for i, s in enumerate(samples):
            values = getattr(s, name) if name != "sampler_logps" else s.sampler_logps
            start = len(s.prompt_ids)
            out[i, start : start + len(values)] = torch.tensor(values, dtype=torch.float32)
        return out

    batch["sampler_logps"] = per_token("sampler_logps")
    for name in ("old_logps", "ref_logps", "values", "returns"):
        if samples and getattr(samples[0], name) is not None:
            batch[name] = per_token(name)
    if samples and len(samples[0].advantages) == 1:
        batch["advantages"] = torch.tensor([s.advantages[0] for s in samples], dtype=torch.float32)
    elif samples:
        batch["advantages"] = per_token("advantages")
    if shared:  # the forward runs on one packed row; the per-token values above keep the (B, W) layout
        packed = collate_groups_shared([s.prompt_ids for s in samples], [s.completion_ids for s in samples])
        batch["input_ids"], batch["attention_mask"] = packed.pop("input_ids"), packed.pop("attention_mask")
        batch.update(packed)
    return batch


@torch.no_grad()
def grouped_layout_works(model, pad_id: int, log) -> bool:
    """Prefix sharing needs the fused head and an attention that takes a 4D mask (SDPA); a one-time check on two
    synthetic groups confirms the packed layout scores tokens as the padded one does (else the padded is used)."""
    if not (supports_prefix_sharing(model) and use_segmented_attention(model)):
        log("prefix sharing off: this model needs the padded layout (logit transform or attention without 4D masks)")
        return False
    vocab = unwrap_causal_lm(model).config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    p1, p2 = ids(5), ids(3)
    samples = [Sample(p, ids(n), [0.0] * n, "eos", "", 0, 0.0, [0.0]) for p, n in ((p1, 4), (p1, 6), (p2, 2), (p2, 5))]
    for s in samples:
        s.sampler_logps = [0.0] * len(s.completion_ids)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    plain = {k: v.to(device) for k, v in collate_samples(samples, pad_id).items()}
    shared = {k: v.to(device) for k, v in collate_samples(samples, pad_id, shared=True).items()}
    scorer = CompletionScorer(model)
    expected = scorer(plain["input_ids"], plain["attention_mask"], plain["completion_mask"])
    got = scorer(shared["input_ids"], shared["attention_mask"], shared["completion_mask"], shared=shared_inputs(shared))
    model.train(was)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-3):
        diff = float((got - expected).abs().max())
        log(f"prefix sharing off: packed and padded log-probs differ for this model (max {diff:.3g})")
        return False
    return True
