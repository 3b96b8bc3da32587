"""Sampling from the live policy, for rollouts, evaluation and the CLI: chunks of prompts prefilled together and
decoded by ``decode.DecodeBatch`` (the decode loop serving shares) until every row has finished.

The model is used as it is (a training policy, a PEFT-wrapped LoRA model, a plain HF model): no weight copy, so
samples always come from the current weights. Each prompt draws from its own ``torch.Generator`` seeded by the
caller, so a prompt's samples do not depend on which other prompts share the batch (multi-process runs and resumed
runs sample the same tokens).

Reported log-probs are those of the distribution the token was drawn from *before* truncation: log softmax(logits /
temperature), exactly what the trainer computes for the same tokens (temperature 0 = greedy reports temperature 1).
Top-k / top-p / min-p only decide which tokens may be drawn; that truncation is not in the reported log-probs
(as in vLLM's default), so keep them off for on-policy RL or accept the small bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from alignkit.data.formats import Content
from alignkit.data.tokenize import Tokenizer
from alignkit.generation.decode import DecodeBatch, Request, completion_text, filtered_probs, sample_categorical
from alignkit.generation.episodes import CachedTurns, Episode, PrefilledTurns, Respond, TurnLimits, run_episodes
from alignkit.generation.fast_decode import FastDecoder
from alignkit.generation.params import (
    FINISH_REASONS,
    Completion,
    SamplerStats,
    SamplingParams,
    check_request,
)
from alignkit.logprobs import unwrap_causal_lm
from alignkit.models.attention import use_segmented_attention

__all__ = [  # the params and the decode helpers are re-exported: callers import them from here
    "FINISH_REASONS", "Completion", "Episode", "OnToken", "Respond", "TurnLimits", "Sampler", "SamplerStats",
    "SamplingParams", "check_request",
    "filtered_probs", "sample_categorical",
]  # fmt: skip

OnToken = Callable[[int, int, int], None]  # (prompt index, sample index, token id)


class Sampler:
    """Batched sampling from ``model`` (a causal LM, or a PEFT model around one).

    ``max_rows``: rows decoded together (prompts x n per chunk); ``compact_at``: finished rows leave the batch once
    they are this share of it (each compaction copies the cache; 0 = at every finish). ``fast``: decode Llama-family
    models with ``fast_decode.FastDecoder`` (others always use the model's own forward).
    """

    def __init__(self, model, tokenizer: Tokenizer, max_rows: int = 64, compact_at: float = 0.125, fast: bool = True):
        self.model = model
        self.tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)  # a HF tokenizer is fine
        self.max_rows, self.compact_at, self.fast = max_rows, compact_at, fast
        lm = unwrap_causal_lm(model)
        eos = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted({self.tok.eos_id, *eos})
        self.stats = SamplerStats()
        # SDPA models switch to alignkit's attention (plain SDPA unless told otherwise), whose decode path attends
        # with two batched matmuls; other attention implementations ignore the flag
        use_segmented_attention(lm)

    def prompt_ids(self, prompt: Content, chat: bool = True) -> list[int]:
        """Token ids of a prompt exactly as training tokenizes it (chat template with the generation prompt; a text
        prompt becomes one user message when ``chat`` and the tokenizer has a template)."""
        if isinstance(prompt, str) and chat and getattr(self.tok.hf, "chat_template", None):
            prompt = ({"role": "user", "content": prompt},)
        return self.tok.prompt_ids(tuple(prompt) if isinstance(prompt, list) else prompt)

    def generate(
        self, prompts: list[Content], params: SamplingParams, seed: int = 0, chat: bool = True
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt (text or messages); prompt i samples with seed ``seed + i``."""
        ids = [self.prompt_ids(p, chat) for p in prompts]
        return self.sample(ids, params, [seed + i for i in range(len(ids))])

    @torch.no_grad()
    def sample(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int], on_token: OnToken | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt of token ids; ``seeds[i]`` seeds prompt i's generator.

        ``on_token(prompt, sample, token_id)`` is called for each drawn token as it is drawn (streaming)."""
        check_request(prompts, params, seeds)
        self.stats = SamplerStats()
        was_training = self.model.training
        self.model.eval()
        lm = unwrap_causal_lm(self.model)
        device = next(lm.parameters()).device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm.dtype
        # packed once per call from the live weights (LoRA merged): never older than this call, and dropped with it
        # (a copy of the weights; kept between calls, every sampler would hold one more model's worth of memory)
        fast = FastDecoder.build(lm, dtype) if self.fast else None
        per_chunk = max(1, self.max_rows // params.n)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less left padding
        results: dict[int, list[Completion]] = {}
        try:
            for s in range(0, len(order), per_chunk):
                chunk = order[s : s + per_chunk]
                requests = [Request(prompts[i], params, seeds[i], _prompt_hook(on_token, i)) for i in chunk]
                batch = DecodeBatch(lm, self.tok, self.eos_ids, dtype, fast, self.compact_at, self.stats)
                batch.admit(requests, *batch.prefill(requests, params.max_new_tokens))
                while batch:
                    batch.step()
                for i, request in zip(chunk, requests):
                    results[i] = request.completions(self.tok)
        finally:
            self.model.train(was_training)
        return [results[i] for i in range(len(prompts))]

    @torch.no_grad()
    def sample_episodes(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seeds: list[int],
        respond: Respond,
        limits: TurnLimits,
        keep_cache: bool = True,
    ) -> list[list[Episode]]:
        """``params.n`` multi-turn episodes per prompt of token ids (``episodes.run_episodes``): the model's turns are
        decoded as in ``sample``; ``respond`` answers each ended turn with observation tokens or ends the episode.
        ``params.max_new_tokens`` is not used: ``limits`` bound each turn and the whole episode. ``keep_cache``
        False re-prefills the whole history every turn (the slow oracle of the cached path)."""
        check_request(prompts, params, seeds)
        if not keep_cache:
            return run_episodes(PrefilledTurns(self.sample), prompts, params, seeds, respond, limits)
        self.stats = SamplerStats()
        was_training = self.model.training
        self.model.eval()
        lm = unwrap_causal_lm(self.model)
        device = next(lm.parameters()).device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm.dtype
        fast = FastDecoder.build(lm, dtype) if self.fast else None
        per_chunk = max(1, self.max_rows // params.n)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, list[Episode]] = {}

        def batch() -> DecodeBatch:
            return DecodeBatch(lm, self.tok, self.eos_ids, dtype, fast, 0.0, self.stats)

        try:
            for s in range(0, len(order), per_chunk):
                chunk = order[s : s + per_chunk]

                def chunk_respond(ends, chunk=chunk):  # chunk-local prompt indices -> the caller's
                    return respond([replace(end, prompt=chunk[end.prompt]) for end in ends])

                turns = CachedTurns(batch, self.tok.pad_id, self.stats)
                done = run_episodes(turns, [prompts[i] for i in chunk], params, [seeds[i] for i in chunk],
                                    chunk_respond, limits)  # fmt: skip
                results.update(zip(chunk, done))
        finally:
            self.model.train(was_training)
        return [results[i] for i in range(len(prompts))]

    def _text(self, tokens: list[int], stop: tuple[str, ...], finish: str = "eos") -> str:
        return completion_text(self.tok, tokens, stop, finish)


def _prompt_hook(on_token: OnToken | None, prompt: int):
    """``on_token(prompt, sample, token)`` bound to one prompt -> a request's ``(sample, token)`` hook."""
    return None if on_token is None else (lambda k, t: on_token(prompt, k, t))
