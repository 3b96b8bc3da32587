"""vLLM as the rollout sampler (``rollout.backend=vllm``): an in-process ``vllm.LLM`` on the policy's base model whose
weights are replaced by the policy's current ones (LoRA merged on the fly) before every ``sample`` call.

UNTESTED HERE: the project's machines have no GPU and no vllm, so only the error without vllm/CUDA and
``merged_weights`` are tested. Written against the sources of vLLM 0.11.0 and 0.33.0 and after TRL's colocate mode:

- the engine runs in this process (``distributed_executor_backend="external_launcher"``, which also turns off vLLM's
  engine-core subprocess), so ``LLM.apply_model(fn)`` calls ``fn(model)`` directly on the engine's ``nn.Module`` and
  its ``load_weights(iterable of (HF name, tensor))`` copies the policy's weights in place, no serialization; then
  ``reset_prefix_cache()`` drops KV blocks computed with the old weights. Unquantized engines only.
- requests are ``TokensPrompt`` with per-prompt ``SamplingParams(seed=...)`` (vLLM seeds sample k of a prompt with
  ``seed + k``), the policy's EOS ids as ``stop_token_ids`` and ``logprobs=0`` (the sampled token's log-prob).
- ``logprobs_mode="processed_logprobs"``: log-probs after temperature (and at temperature 0, of the raw logits), the
  same as ``Sampler``'s and the trainer's. vLLM computes them after top-k/top-p/min-p masking too, so with those on
  they are of the truncated, renormalized distribution (``Sampler`` reports the untruncated one); keep them off for RL.
- finish reasons: ``length``; ``stop`` with a string ``stop_reason`` = a stop string; other ``stop`` = EOS (vLLM
  appends the EOS token to the output ids before checking it, so it is in ``token_ids``; checked below).

Environment: ``ALIGNKIT_VLLM_GPU_MEMORY`` (share of GPU memory for the engine, default 0.3: the trainer needs the
rest), ``ALIGNKIT_VLLM_DTYPE`` (default bfloat16 where supported, else float32), ``ALIGNKIT_VLLM_MAX_MODEL_LEN``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Iterator

import torch

from alignkit.data.tokenize import Tokenizer
from alignkit.errors import UserError
from alignkit.generation.sampler import Completion, Sampler, SamplerStats, SamplingParams, check_request
from alignkit.logprobs import unwrap_causal_lm
from alignkit.models.load import resolve_model_path

FALLBACK = "Fix: {}, or use rollout.backend=alignkit (the built-in sampler), which works everywhere"


def merged_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF checkpoint name, tensor)`` of every weight of ``model`` (a causal LM, or a PEFT model around one) as it
    computes now, without modifying it: a LoRA layer gives ``W + sum over active unmerged adapters of B A * scale``
    (peft's ``get_delta_weight``), a ``modules_to_save`` wrapper its active copy; tied weights come once."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    seen: set[int] = set()
    skip = None  # prefix of a module already given whole (named_modules is pre-order: its children follow it)
    for name, module in unwrap_causal_lm(model).named_modules():
        if skip is not None and name.startswith(skip):
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, LoraLayer):
            skip = prefix
            adapters = [] if module.disable_adapters else [
                a for a in module.active_adapters if a in module.scaling and a not in module.merged_adapters
            ]  # fmt: skip
            if any(module.use_dora.get(a, False) for a in adapters):
                raise UserError(f"{name}: DoRA adapters are not merged for vLLM. " + FALLBACK.format("use plain LoRA"))
            for key, p in module.get_base_layer().named_parameters():
                if key == "weight":
                    p = sum((module.get_delta_weight(a) for a in adapters), p.detach())
                yield prefix + key, p.detach()
        elif isinstance(module, ModulesToSaveWrapper):
            skip = prefix
            active = module.active_adapters[0] if module.active_adapters else None
            copy = module.original_module if module.disable_adapters or active not in module.modules_to_save else (
                module.modules_to_save[active])  # fmt: skip
            for key, p in copy.named_parameters():
                yield prefix + key, p.detach()
        else:
            for key, p in module.named_parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    yield prefix + key, p.detach()


def base_model_dir(model) -> str:
    """The directory vLLM loads: the PEFT adapter's base model, else the model's own ``name_or_path``."""
    peft_config = getattr(model, "peft_config", None)
    name = next(iter(peft_config.values())).base_model_name_or_path if peft_config else None
    return resolve_model_path(name or getattr(unwrap_causal_lm(model).config, "name_or_path", None))


class VLLMSampler(Sampler):
    """``Sampler``'s interface (``sample``, ``generate``, ``prompt_ids``, ``stats``) on an in-process vLLM engine."""

    def __init__(self, model, tokenizer: Tokenizer, max_rows: int = 64):
        try:
            import vllm
        except ImportError:
            raise UserError("rollout.backend=vllm needs vLLM, which is not installed. "
                            + FALLBACK.format("pip install vllm on a CUDA machine")) from None  # fmt: skip
        if not torch.cuda.is_available():
            raise UserError("rollout.backend=vllm needs a CUDA GPU and none is visible. "
                            + FALLBACK.format("run on a CUDA GPU")) from None  # fmt: skip
        self.model, self.tok, self.max_rows = model, tokenizer, max_rows
        eos = getattr(getattr(unwrap_causal_lm(model), "generation_config", None), "eos_token_id", None)
        self.eos_ids = sorted({tokenizer.eos_id, *([eos] if isinstance(eos, int) else list(eos or []))})
        self.stats = SamplerStats()
        if "MASTER_PORT" not in os.environ:  # external_launcher reads torchrun's variables; alone: rank 0 of 1
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: weights pushed in place
        max_len = os.environ.get("ALIGNKIT_VLLM_MAX_MODEL_LEN")
        self.llm = vllm.LLM(
            model=base_model_dir(model),
            dtype=os.environ.get("ALIGNKIT_VLLM_DTYPE", "bfloat16" if torch.cuda.is_bf16_supported() else "float32"),
            gpu_memory_utilization=float(os.environ.get("ALIGNKIT_VLLM_GPU_MEMORY", "0.3")),
            max_model_len=int(max_len) if max_len else None,
            max_num_seqs=max_rows,
            distributed_executor_backend="external_launcher",
            logprobs_mode="processed_logprobs",
        )

    @torch.no_grad()
    def push_weights(self) -> None:
        """Copy the policy's current weights (LoRA merged) into the engine and forget its cached prefixes."""
        loaded = self.llm.apply_model(lambda engine_model: engine_model.load_weights(merged_weights(self.model)))
        if not any(loaded):
            raise RuntimeError("vLLM loaded none of the policy's weights: the parameter names do not match")
        self.llm.reset_prefix_cache()

    def sample(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int], on_token=None
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt of token ids; ``seeds[i]`` seeds prompt i's requests. ``on_token``
        (as in ``Sampler.sample``) is called for each token after the batch finished (vLLM's offline API)."""

        check_request(prompts, params, seeds)
        self.stats = SamplerStats()
        t0 = time.perf_counter()
        self.push_weights()
        self.stats.extra["weight_sync_seconds"] = time.perf_counter() - t0
        out = self._generate(prompts, [params] * len(prompts), seeds)
        if on_token is not None:
            for p, group in enumerate(out):
                for k, c in enumerate(group):
                    for t in c.token_ids:
                        on_token(p, k, t)
        return out

    def sample_episodes(self, prompts, params, seeds, respond, limits, keep_cache: bool = False):
        """Multi-turn episodes (``Sampler.sample_episodes``) on the engine: the weights are pushed once, and every
        turn submits the continuing episodes' whole histories in one ``generate`` call, whose prefix cache holds
        their earlier turns (no cache handle to continue from is exposed by vLLM's offline API)."""
        from alignkit.generation.episodes import PrefilledTurns, run_episodes

        check_request(prompts, params, seeds)
        self.stats = SamplerStats()
        t0 = time.perf_counter()
        self.push_weights()
        self.stats.extra["weight_sync_seconds"] = time.perf_counter() - t0
        turns = PrefilledTurns(lambda p, sp, s: self._generate(p, [sp] * len(p), s), rows=self._generate)
        return run_episodes(turns, prompts, params, seeds, respond, limits)

    def _generate(self, prompts: list[list[int]], params: list[SamplingParams], seeds: list[int]):
        """One ``generate`` call: prompt i with ``params[i]`` and ``seeds[i]`` -> its completions."""
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        t1 = time.perf_counter()
        requests = [
            VLLMParams(n=p.n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
                       max_tokens=p.max_new_tokens, stop=list(p.stop), stop_token_ids=self.eos_ids, logprobs=0,
                       seed=int(seed))
            for p, seed in zip(params, seeds)
        ]  # fmt: skip
        with torch.autocast("cuda", enabled=False):  # the engine runs in this thread: no trainer autocast inside it
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], requests, use_tqdm=False)
        self.stats.decode_seconds += time.perf_counter() - t1
        out = [[self._completion(c, p.stop) for c in o.outputs] for o, p in zip(outputs, params)]
        self.stats.tokens += sum(len(c.token_ids) for group in out for c in group)
        return out

    def _completion(self, c, stop: tuple[str, ...]) -> Completion:
        ids = list(c.token_ids)
        logps = [position[t].logprob for t, position in zip(ids, c.logprobs)]
        if c.finish_reason == "length":
            reason = "length"
        elif c.finish_reason == "stop":
            reason = "stop" if isinstance(c.stop_reason, str) else "eos"
        else:
            raise RuntimeError(f"vLLM ended a request with finish_reason {c.finish_reason!r}")
        if reason == "eos" and (not ids or ids[-1] not in self.eos_ids):
            raise RuntimeError("vLLM stopped at EOS but left the EOS token out of token_ids")
        return Completion(ids, logps, reason, self._text(ids, stop, reason))
