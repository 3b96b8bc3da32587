"""A KV cache that writes each new token in place instead of concatenating the whole cache every step.

transformers' ``DynamicLayer`` grows by ``torch.cat``: every decode step copies every layer's keys and values
(at 64 rows x 200 tokens on SmolLM2-135M, ~220 MB per step in bf16). ``GrowingLayer`` keeps a buffer with spare
room (doubled when full) and returns views of its filled part, so a step writes one token per row. It plugs into
transformers' ``Cache`` as a layer class, so any model that takes a ``DynamicCache`` takes it.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """One layer's keys and values, ``(batch, kv_heads, capacity, head_dim)`` buffers filled up to ``length``;
    ``dtype``: the buffers' precision (None = that of the first keys; bf16 sampling stores bf16 so attention
    never casts the cache)."""

    def __init__(self, capacity: int = 256, dtype: torch.dtype | None = None, **kwargs):
        super().__init__(**kwargs)
        self.capacity, self.length, self.store_dtype = capacity, 0, dtype

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = self.store_dtype or key_states.dtype, key_states.device
        b, h, n, d = key_states.shape
        self.keys = key_states.new_empty(b, h, n + self.capacity, d, dtype=self.dtype)
        self.values = value_states.new_empty(b, h, n + self.capacity, value_states.shape[-1], dtype=self.dtype)
        self.length = 0
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.keys.shape[-2]:
            self._grow(max(2 * self.keys.shape[-2], self.length + n))
        self.keys[:, :, self.length : self.length + n] = key_states
        self.values[:, :, self.length : self.length + n] = value_states
        self.length += n
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def _grow(self, capacity: int) -> None:
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.keys = self.keys[:, :, : self.length].repeat_interleave(repeats, dim=0)
            self.values = self.values[:, :, : self.length].repeat_interleave(repeats, dim=0)
            self._grow(self.length + self.capacity)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop_left(self, columns: int) -> None:
        """Drop the first ``columns`` positions of every row (left padding no row attends to any more)."""
        if self.is_initialized and columns > 0:
            self.keys, self.values = self.keys[:, :, columns:], self.values[:, :, columns:]
            self.length -= columns


class GrowingCache(Cache):
    """A ``Cache`` of ``GrowingLayer``s, created lazily, one per attention layer. ``capacity``: the room left past the
    prompt (the number of tokens to generate), so a run never grows; ``dtype``: the buffers' precision.
    ``batch_repeat_interleave`` (share a prefilled
    prompt among samples) and ``batch_select_indices`` (drop finished rows) come from ``Cache``."""

    def __init__(self, capacity: int = 256, dtype: torch.dtype | None = None):
        super().__init__(layers=None, layer_class_to_replicate=lambda: GrowingLayer(capacity, dtype))
        self.capacity = capacity

    def crop_left(self, columns: int) -> None:
        for layer in self.layers:
            layer.crop_left(columns)


def concat_left_padded(caches: list[GrowingCache], width: int, capacity: int = 64) -> GrowingCache:
    """The rows of ``caches`` in one cache of ``width`` positions: each cache's rows right-aligned (left padding of
    zeros, which the attention mask hides), with room for ``capacity`` more tokens. Copies every layer once."""
    out = GrowingCache(capacity)
    for parts in zip(*(c.layers for c in caches)):
        first = parts[0]
        rows = sum(p.keys.shape[0] for p in parts)
        layer = GrowingLayer(capacity, first.dtype)
        layer.keys = first.keys.new_zeros(rows, first.keys.shape[1], width + capacity, first.keys.shape[-1])
        layer.values = first.values.new_zeros(rows, first.values.shape[1], width + capacity, first.values.shape[-1])
        row = 0
        for p in parts:
            b = p.keys.shape[0]
            layer.keys[row : row + b, :, width - p.length : width] = p.keys[:, :, : p.length]
            layer.values[row : row + b, :, width - p.length : width] = p.values[:, :, : p.length]
            row += b
        layer.length, layer.dtype, layer.device, layer.is_initialized = width, first.dtype, first.device, True
        out.layers.append(layer)
    return out
