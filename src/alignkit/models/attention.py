"""Segmented SDPA: attention over packed rows without computing the blocks the mask removes.

A packed row holds several independent sequences back to back (``collate_pairs_shared(..., packed=True)``): no
padding, so every linear layer sees only real tokens, and a ``(1, 1, T, T)`` block-diagonal mask. Plain SDPA would
compute all ``T x T`` scores and mask most of them; this attention function runs SDPA once per block instead, so
attention costs ``sum(L_i^2)`` rather than ``(sum L_i)^2``. The mask stays complete, so any other attention
implementation computes the same result, only slower. Without ``segment_lengths`` the function is transformers'
own SDPA, so a model switched to it behaves exactly as before everywhere else (generation, plain batches).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SEGMENTED = "alignkit_segmented_sdpa"


def segmented_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    segment_lengths: list[int] | None = None,
    decode_attention: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA per segment of a packed row. query ``(1, heads, T, d)``, key/value ``(1, kv_heads, T, d)``, mask
    ``(1, 1, T, T)`` bool with ``segment_lengths`` summing to T -> ``(1, T, heads, d)`` (transformers' layout).
    ``decode_attention`` (the sampler sets it): one query token per row attends with two batched matmuls."""
    if decode_attention and query.shape[2] == 1:
        return decode_attention_forward(query, key, value, attention_mask, kwargs.get("scaling")), None
    if segment_lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    dtype, device = query.dtype, query.device.type
    upcast = device == "cpu" and dtype == torch.bfloat16
    if upcast:
        # PyTorch's CPU flash attention is ~1.5x faster in fp32 than in bf16 at these sizes, and more precise;
        # autocast would cast the inputs back to bf16, so it is off here. The output returns to bf16 for o_proj.
        query, key, value = query.float(), key.float(), value.float()
    outputs, start = [], 0
    with torch.autocast(device, enabled=False) if upcast else contextlib.nullcontext():
        for n in segment_lengths:
            end = start + n
            block = attention_mask[:, :, start:end, start:end] if attention_mask is not None else None
            out, _ = sdpa_attention_forward(
                module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], block, **kwargs
            )
            outputs.append(out)
            start = end
    return torch.cat(outputs, dim=1).to(dtype), None


def decode_attention_forward(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """Attention of one new token per row: query ``(B, heads, 1, d)``, key/value ``(B, kv_heads, L, d)`` (views of a
    KV cache), bool mask ``(B, 1, 1, L)`` or None -> ``(B, 1, heads, d)``.

    Each key/value head serves its group of query heads in one ``bmm`` without repeating the cache, and the keys
    are the left operand (K q^T, not q K^T), so the cache is read in place instead of copied transposed; PyTorch's
    CPU flash kernel takes ~10x longer on these shapes (it tiles over query blocks, and a decode step has one)."""
    b, heads, _, d = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scaling = d**-0.5 if scaling is None else scaling
    q = query.reshape(b * kv_heads, group, d)
    scores = torch.bmm(key.reshape(b * kv_heads, length, d), q.transpose(1, 2))  # (B * kv_heads, L, group)
    scores = scores.transpose(1, 2).float().mul_(scaling).view(b, kv_heads, group, length)  # contiguous, float32
    if mask is not None and mask.dtype == torch.bool:
        scores.masked_fill_(~mask.view(b, 1, 1, length), float("-inf"))
    elif mask is not None:  # additive float mask
        scores.add_(mask.view(b, 1, 1, length).float())
    probs = scores.softmax(-1).to(value.dtype).view(b * kv_heads, group, length)
    out = torch.bmm(probs, value.reshape(b * kv_heads, length, value.shape[-1]))  # (B * kv_heads, group, d)
    return out.view(b, 1, heads, value.shape[-1])


AttentionInterface.register(SEGMENTED, segmented_sdpa)
AttentionMaskInterface.register(SEGMENTED, sdpa_mask)


def _config(model: nn.Module):
    """The transformers config of a model or of a PEFT wrapper's base model (None if it has none)."""
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return getattr(inner, "config", None)


def takes_4d_mask(model: nn.Module) -> bool:
    """True when the model's attention takes a custom boolean ``(B, 1, T, T)`` mask (SDPA, flex, segmented SDPA),
    as prefix-shared pairs need. ``model``: a transformers model or a PEFT wrapper."""
    return getattr(_config(model), "_attn_implementation", None) in ("sdpa", "flex_attention", SEGMENTED)


def use_segmented_attention(model: nn.Module) -> bool:
    """Switch a transformers model (or a PEFT wrapper's base) from SDPA to ``segmented_sdpa``; True when the model
    can take packed rows. Idempotent; other attention implementations are left alone (False). The setting is not
    saved with the model (transformers does not serialize it)."""
    config = _config(model)
    impl = getattr(config, "_attn_implementation", None)
    if impl == "sdpa":
        config._attn_implementation = SEGMENTED
        return True
    return impl == SEGMENTED
