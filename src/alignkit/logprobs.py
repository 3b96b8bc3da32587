"""Per-token log-probabilities of completion tokens, without a full log-softmax over the batch.

Conventions: ``input_ids``, ``attention_mask``, ``completion_mask`` are ``(batch, seq)``; ``completion_mask[b, t]``
is 1 when token t of row b is a completion token that is scored (prompt and padding tokens are 0). Token t is
predicted by the hidden state at position t - 1, so a completion token at t = 0 is never scored.

Two paths produce the same numbers (a test proves it):
- ``fused``: run the decoder once, gather the hidden states of scored positions only, and compute
  log p(label) chunk by chunk with a custom autograd function that recomputes each chunk's logits in
  backward. Peak memory for the head is one ``(chunk, vocab)`` block instead of ``(batch, seq, vocab)``.
- ``plain``: the model's own forward returns full logits; log-probs are gathered row by row.
The fused path is used whenever the model's output head is a plain linear layer with no logit transform.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from alignkit.models.attention import takes_4d_mask, use_segmented_attention

Tensor = torch.Tensor

# Config attributes of models whose logits are transformed after the head (softcap, scale): use the plain path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


# The head's softmax is kept from forward to backward (instead of recomputing the logits there) while it fits in
# this many bytes; beyond that, backward recomputes it chunk by chunk, so memory stays one chunk of logits.
KEEP_PROBS_BYTES = 256 << 20


class _LinearLabelLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T + bias)[label], chunked over rows.

    hidden ``(n, h)``, weight ``(vocab, h)``, bias ``(vocab,)`` or None, labels ``(n,)`` -> ``(n,)`` float32.
    Logits are computed vocab-major, ``(vocab, c) = weight @ hidden.T`` (on CPU 1.4x faster than ``hidden @
    weight.T`` at SmolLM2's 576 x 49152 head), in float32; the softmax is kept for backward up to
    ``KEEP_PROBS_BYTES`` (in the operands' dtype), else recomputed there.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, want_entropy=False):
        n = hidden.shape[0]
        out = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_zeros(n if want_entropy else 0, dtype=torch.float32)
        keep = n * weight.shape[0] * hidden.element_size() <= KEEP_PROBS_BYTES
        cols = torch.arange(min(chunk_size, n), device=hidden.device)
        probs = []
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            logits = _chunk_logits(hidden[s:e], weight, bias)  # (vocab, c)
            lse[s:e] = torch.logsumexp(logits, dim=0)
            out[s:e] = logits[labels[s:e], cols[: e - s]] - lse[s:e]
            if keep or want_entropy:
                logp = logits.sub_(lse[s:e])  # in place: log softmax
                p = logp.exp()
                if want_entropy:
                    entropy[s:e] = -(p * logp).sum(0)
                if keep:
                    probs.append(p.to(hidden.dtype))
        ctx.save_for_backward(hidden, weight, bias, labels, lse, *probs)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out, _grad_entropy=None):
        hidden, weight, bias, labels, lse, *probs = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, size = hidden.shape[0], ctx.chunk_size
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if (need_b and bias is not None) else None
        cols = torch.arange(min(size, n), device=hidden.device)
        for i, s in enumerate(range(0, n, size)):
            e = min(s + size, n)
            h, g = hidden[s:e], grad_out[s:e].float()
            if probs:
                p = probs[i].to(torch.float32, copy=True)
            else:
                p = _chunk_logits(h, weight, bias).sub_(lse[s:e]).exp_()
            # d log p_y / d logits = onehot(y) - softmax(logits), times the incoming gradient: (vocab, c)
            d_logits = p.mul_(-g)
            d_logits[labels[s:e], cols[: e - s]] += g
            if grad_b is not None:
                grad_b += d_logits.sum(1)
            d_logits = d_logits.to(hidden.dtype)
            if need_h:
                grad_h[s:e] = d_logits.t() @ weight
            if need_w and h.dtype == torch.float32:
                grad_w.addmm_(d_logits, h)
            elif need_w:
                grad_w += (d_logits @ h).float()
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
            None,
        )


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Vocab-major float32 logits ``(vocab, c)`` of hidden states ``h`` ``(c, hidden)``."""
    logits = weight @ h.t()
    if bias is not None:
        logits = logits + bias[:, None]
    return logits.float()


def linear_label_logprobs(
    hidden: Tensor,
    head: nn.Linear,
    labels: Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """log p(labels) under ``softmax(head(hidden) / temperature)``: hidden ``(n, h)``, labels ``(n,)`` -> ``(n,)``
    float32; with ``entropy`` also the entropy of each position's distribution ``(n,)`` (no gradient).

    Honors autocast: operands are cast to the autocast dtype once, outside the chunk loop. The temperature scales
    the hidden states and the bias, ``(h / T) W^T + b / T = (h W^T + b) / T``, so the head weight is never copied.
    """
    weight, bias = head.weight, head.bias
    if temperature != 1.0:
        hidden = hidden / temperature
        bias = bias / temperature if bias is not None else None
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    else:
        hidden = hidden.to(weight.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        logps, ent = _LinearLabelLogProbs.apply(hidden, weight, bias, labels, chunk_size, entropy)
    return (logps, ent) if entropy else logps


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside a PEFT wrapper (LoRA layers stay injected and active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_fused_head(model: nn.Module) -> bool:
    """True when logits are exactly ``lm_head(decoder(x))`` with a plain linear head."""
    lm = unwrap_causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    config = getattr(lm, "config", None)
    transformed = any(getattr(config, a, None) not in (None, 1, 1.0) for a in _LOGIT_TRANSFORMS)
    return type(head) is nn.Linear and lm.base_model is not lm and not transformed


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    fused: bool | None = None,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probs of completion tokens under ``softmax(logits / temperature)``: ``(batch, seq)`` float32,
    0 where ``completion_mask`` is 0; with ``entropy`` also each scored position's entropy ``(batch, seq)``.

    ``fused=None`` picks the fused path when the model supports it.
    """
    if fused is None:
        fused = supports_fused_head(model)
    if fused:
        lm = unwrap_causal_lm(model)
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return hidden_token_logprobs(lm, hidden, input_ids, completion_mask, chunk_size, temperature, entropy)
    scored = completion_mask[:, 1:].bool()  # (batch, seq - 1): token t + 1 is scored from position t
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    rows = [(logits[b][scored[b]].float() / temperature).log_softmax(-1) for b in range(input_ids.shape[0])]
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:][scored] = torch.cat([r.gather(1, input_ids[b, 1:][scored[b], None])[:, 0] for b, r in enumerate(rows)])
    if not entropy:
        return out
    ent = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    ent[:, 1:][scored] = torch.cat([-(r.exp() * r).sum(-1).detach() for r in rows])
    return out, ent


def hidden_token_logprobs(
    lm: nn.Module,
    hidden: Tensor,
    input_ids: Tensor,
    completion_mask: Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``token_logprobs`` from the decoder's last hidden states ``(batch, seq, d)`` of ``lm`` (a ``*ForCausalLM``
    with a plain linear head): for callers that also need the hidden states (a value head on the policy trunk)."""
    scored = completion_mask[:, 1:].bool()
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    result = linear_label_logprobs(
        hidden[:, :-1][scored], lm.get_output_embeddings(), input_ids[:, 1:][scored], chunk_size, temperature, entropy
    )
    logps, entropies = result if entropy else (result, None)
    out[:, 1:][scored] = logps
    if not entropy:
        return out
    ent = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    ent[:, 1:][scored] = entropies
    return out, ent


def scored_distributions(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """The full next-token log-distributions ``(N, vocab)`` float32 at the N scored positions (those predicting a
    token where ``completion_mask`` is 1, in row-major order), under ``softmax(logits / temperature)``: what a
    divergence between two models' distributions needs (distillation)."""
    scored = completion_mask[:, 1:].bool()
    if supports_fused_head(model):
        lm = unwrap_causal_lm(model)
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = lm.get_output_embeddings()(hidden[:, :-1][scored])
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][scored]
    return (logits.float() / temperature).log_softmax(-1)


def supports_prefix_sharing(model: nn.Module) -> bool:
    """True when the fused head applies and attention takes a custom boolean 4D mask (SDPA, flex)."""
    return supports_fused_head(model) and takes_4d_mask(unwrap_causal_lm(model))


SHARED_KEYS = ("position_ids", "logp_index", "logp_labels", "logp_segments", "completion_tokens", "logp_target")


@torch.no_grad()
def layouts_agree(
    model: nn.Module, plain: Callable[[], Tensor], shared: Callable[[], Tensor], what: str, log, atol: float = 1e-3
) -> bool:
    """The prefix-sharing probe, run once before a method trains on the shared layout: ``shared()`` (the values of
    a small prefix-shared batch) against ``plain()`` (the same examples padded), in eval mode. False, with a log
    line, when they differ: the method then keeps the padded layout."""
    was = model.training
    model.eval()
    try:
        expected, got = plain(), shared()
    finally:
        model.train(was)
    if torch.allclose(got, expected, rtol=1e-4, atol=atol):
        return True
    diff = float((got - expected).abs().max())
    log(f"prefix sharing off: the shared layout's {what} differ from the padded layout's for this model "
        f"(max {diff:.3g})")  # fmt: skip
    return False


def shared_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The keys of a prefix-shared batch that ``segment_logprobs`` needs besides ids and mask (packed or not)."""
    return {k: batch[k] for k in (*SHARED_KEYS, "segment_lengths") if k in batch}


def decoder_hidden(decoder: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Last hidden states ``(R, T, d)`` of a prefix-shared batch (``collate_pairs_shared``, packed or not).

    ``decoder`` is the transformers base model (``LlamaModel`` etc.); a packed batch runs its attention per pair
    (``models.attention.segmented_sdpa``) when the model uses SDPA, else the block-diagonal mask alone keeps the
    pairs apart."""
    extra = {}
    if "segment_lengths" in batch and use_segmented_attention(decoder):
        extra["segment_lengths"] = batch["segment_lengths"].tolist()
    return decoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        **extra,
    ).last_hidden_state


def segment_logprobs(model: nn.Module, batch: dict[str, Tensor], chunk_size: int = 1024) -> Tensor:
    """Summed log-probs per segment of a prefix-shared batch (``collate_pairs_shared``): ``(2B,)`` float32.

    One decoder pass over ``input_ids`` ``(R, T)`` with the ``(R, 1, T, T)`` mask and ``position_ids``; the hidden
    states at ``logp_index`` (flat into ``R * T``) score ``logp_labels`` through the fused head and are summed per
    ``logp_segments`` (one segment per entry of ``completion_tokens``).
    """
    lm = unwrap_causal_lm(model)
    hidden = decoder_hidden(lm.base_model, batch)
    picked = hidden.reshape(-1, hidden.shape[-1])[batch["logp_index"]]  # (n, h)
    logps = linear_label_logprobs(picked, lm.get_output_embeddings(), batch["logp_labels"], chunk_size)
    n_segments = batch["completion_tokens"].shape[0]
    return torch.zeros(n_segments, dtype=logps.dtype, device=logps.device).index_add(0, batch["logp_segments"], logps)


def grouped_token_logprobs(
    model: nn.Module,
    batch: dict[str, Tensor],
    shape: tuple[int, int],
    chunk_size: int = 1024,
    temperature: float = 1.0,
    entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probs ``shape = (B, W)`` (as ``token_logprobs`` gives for the right-padded layout) from one
    packed, prefix-shared row of ``collate_groups_shared``: one decoder pass, the scored hidden states through the
    fused head, the values placed at ``logp_target``. With ``entropy`` also the entropies ``(B, W)``."""
    lm = unwrap_causal_lm(model)
    hidden = decoder_hidden(lm.base_model, batch)
    picked = hidden.reshape(-1, hidden.shape[-1])[batch["logp_index"]]
    result = linear_label_logprobs(
        picked, lm.get_output_embeddings(), batch["logp_labels"], chunk_size, temperature, entropy
    )
    logps, entropies = result if entropy else (result, None)
    n = shape[0] * shape[1]
    out = torch.zeros(n, dtype=torch.float32, device=logps.device).index_put((batch["logp_target"],), logps)
    if not entropy:
        return out.view(shape)
    ent = torch.zeros(n, dtype=torch.float32, device=logps.device).index_put((batch["logp_target"],), entropies)
    return out.view(shape), ent.view(shape)


def sequence_logprobs(token_logps: Tensor, completion_mask: Tensor, average: bool = False) -> Tensor:
    """Sum (or mean, ``average=True``) of per-token completion log-probs: ``(batch, seq)`` -> ``(batch,)``."""
    total = token_logps.sum(-1)
    if not average:
        return total
    return total / completion_mask[:, 1:].sum(-1).clamp(min=1)


class CompletionScorer(nn.Module):
    """A causal LM as a module that returns per-token completion log-probs.

    Trainers hand this module (not the bare LM) to accelerate, so distributed wrappers see the whole
    forward. ``forward(input_ids, attention_mask, completion_mask)`` -> ``(batch, seq)`` float32.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.fused = supports_fused_head(model)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_mask: Tensor | None = None,
        shared: dict[str, Tensor] | None = None,
        temperature: float = 1.0,
        entropy: bool = False,
        distributions: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Per-token log-probs ``(batch, seq)`` under ``softmax(logits / temperature)`` (with ``entropy``: and each
        position's entropy ``(batch, seq)``); with ``distributions``, the full log-distributions ``(N, vocab)`` at
        the scored positions (``scored_distributions``); or, for a prefix-shared pair batch (``shared`` holds the
        ``position_ids``/``logp_*``/``completion_tokens`` of ``collate_pairs_shared``), summed log-probs ``(2B,)``;
        or, for prefix-shared groups (``collate_groups_shared``: ``shared`` has ``logp_target``), the per-token
        values in the ``(batch, seq)`` shape of ``completion_mask``.
        """
        if distributions:
            return scored_distributions(self.model, input_ids, attention_mask, completion_mask, temperature)
        if shared is None:
            return token_logprobs(
                self.model, input_ids, attention_mask, completion_mask, self.fused, self.chunk_size, temperature,
                entropy,
            )  # fmt: skip
        if "logp_target" in shared:  # prefix-shared groups (collate_groups_shared): per-token, (B, W) as above
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, **shared}
            return grouped_token_logprobs(
                self.model, batch, tuple(completion_mask.shape), self.chunk_size, temperature, entropy
            )
        return segment_logprobs(
            self.model, {"input_ids": input_ids, "attention_mask": attention_mask, **shared}, self.chunk_size
        )
