"""A model spec (or a live model) -> a ready sampler: the model, its tokenizer, the ``Sampler`` and the precision to
sample in. Every place that samples from a model it loads (``alignkit generate``, evaluation, the LLM judge,
serving) goes through ``load_sampler``; places that sample from a live model (a training policy) use
``ready_sampler``."""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

import torch

from alignkit.data.formats import Content
from alignkit.data.tokenize import Tokenizer
from alignkit.generation.sampler import Completion, Sampler, SamplingParams


@dataclass
class ReadySampler:
    """A model with its sampler; ``bf16``: sample under bf16 autocast (fp32 master weights). ``adapter_off``: the
    model is a PEFT model sampled with its adapter disabled (its base, without a second copy of the weights)."""

    model: torch.nn.Module
    tok: Tokenizer
    sampler: Sampler
    device: torch.device
    bf16: bool
    adapter_off: bool = False

    def running(self) -> AbstractContextManager:
        """The context every call samples in: the precision, and the adapter disabled when ``adapter_off``."""
        stack = ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16))
        if self.adapter_off:
            stack.enter_context(self.model.disable_adapter())
        return stack

    def base(self) -> ReadySampler:
        """This sampler's PEFT model with its adapter disabled: the base model it was trained from, sharing the
        weights (a LoRA policy's reference at no extra memory)."""
        if not hasattr(self.model, "disable_adapter"):
            raise TypeError("base(): the model has no adapter to disable")
        return ReadySampler(self.model, self.tok, Sampler(self.model, self.tok, max_rows=self.sampler.max_rows),
                            self.device, self.bf16, adapter_off=True)  # fmt: skip

    def sample(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[Completion]]:
        """``Sampler.sample`` in this sampler's precision: ``params.n`` completions per prompt of token ids."""
        with self.running():
            return self.sampler.sample(prompts, params, seeds)

    def sample_episodes(self, prompts, params: SamplingParams, seeds: list[int], respond, limits):
        """``Sampler.sample_episodes`` in this sampler's precision."""
        with self.running():
            return self.sampler.sample_episodes(prompts, params, seeds, respond, limits)

    def generate(
        self,
        prompts: list[Content],
        params: SamplingParams | None = None,
        seed: int = 0,
        chat: bool = True,
        **sampling,
    ) -> list[list[Completion]]:
        """``Sampler.generate`` in this sampler's precision: ``params.n`` completions per prompt (text or messages);
        prompt i samples with ``seed + i``. Instead of ``params``, its fields as keywords: ``n=4, temperature=1``."""
        params = params if params is not None else SamplingParams(**sampling)
        with self.running():
            return self.sampler.generate(prompts, params, seed=seed, chat=chat)


def ready_sampler(model: torch.nn.Module, tokenizer, dtype: str = "auto", max_rows: int = 64) -> ReadySampler:
    """A live model (a causal LM or a PEFT model, on its own device) and its tokenizer (HF or alignkit's).
    ``dtype``: auto (bf16 autocast on GPUs and CPUs with native bf16), bf16, or fp32."""
    from alignkit.models import pick_mixed_precision

    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
    device = next(model.parameters()).device
    bf16 = pick_mixed_precision(dtype, device) == "bf16"
    return ReadySampler(model, tok, Sampler(model, tok, max_rows=max_rows), device, bf16)


def load_sampler(
    spec: str | None, device: str = "auto", dtype: str = "auto", max_rows: int = 64, merge_lora: bool = False
) -> ReadySampler:
    """The model ``spec`` names (a model dir, a LoRA adapter dir, a hub id, or None for the embedded default) in fp32
    on ``device`` (auto: cuda, then mps, then cpu), ready to sample. ``merge_lora``: merge an adapter into its base
    (faster decoding; the weights no longer change)."""
    from alignkit.models import load_model, load_tokenizer, pick_device

    target = pick_device(device)
    model = load_model(spec, torch.float32, target)
    if merge_lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return ready_sampler(model, load_tokenizer(spec), dtype, max_rows)
