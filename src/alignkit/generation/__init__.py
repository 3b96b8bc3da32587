"""Sampling from a policy: the batched KV-cache sampler (``Sampler``) and ``generate`` for plain text out."""

from alignkit.generation.generate import generate
from alignkit.generation.sampler import Completion, Sampler, SamplingParams

__all__ = ["Completion", "Sampler", "SamplingParams", "generate"]
