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
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA per segment of a packed row. query ``(1, heads, T, d)``, key/value ``(1, kv_heads, T, d)``, mask
    ``(1, 1, T, T)`` bool with ``segment_lengths`` summing to T -> ``(1, T, heads, d)`` (transformers' layout)."""
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
