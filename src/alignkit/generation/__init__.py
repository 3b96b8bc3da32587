"""Sampling from a policy: the batched KV-cache sampler (``Sampler``), ``load_sampler`` / ``ready_sampler`` (a model
spec or a live model -> a ready sampler), and ``generate`` for plain text out."""

from alignkit.generation.generate import generate
from alignkit.generation.ready import ReadySampler, load_sampler, ready_sampler
from alignkit.generation.sampler import Completion, Sampler, SamplingParams

__all__ = ["Completion", "ReadySampler", "Sampler", "SamplingParams", "generate", "load_sampler", "ready_sampler"]
