"""Sampling from a policy (HF generate with KV cache)."""

from alignkit.generation.generate import generate

__all__ = ["generate"]
