"""Sampling from the live policy: a batched decode loop with a KV cache, for rollouts, evaluation and the CLI.

    prompt ids (ragged) -> prefill once per prompt (left-padded rows) -> cache repeated for the prompt's n samples
    -> per step: next-token distribution (temperature, then top-k / top-p / min-p) -> a token drawn with the
    prompt's own generator -> EOS, stop string or length ends a row -> finished rows leave the batch.

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

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignkit.data.formats import Content
from alignkit.data.tokenize import Tokenizer
from alignkit.errors import UserError
from alignkit.generation.cache import GrowingCache
from alignkit.generation.fast_decode import FastDecoder
from alignkit.logprobs import unwrap_causal_lm
from alignkit.models.attention import use_segmented_attention

FINISH_REASONS = ("eos", "stop", "length")
OnToken = Callable[[int, int, int], None]  # (prompt index, sample index, token id)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature`` 0 = greedy; ``top_k`` 0 and ``top_p`` 1 and ``min_p`` 0 = off."""

    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop: tuple[str, ...] = ()

    def validate(self, where: str = "sampling") -> None:
        checks = [
            (self.n >= 1, "n", "sample at least 1 completion per prompt"),
            (self.max_new_tokens >= 1, "max_new_tokens", "generate at least 1 token"),
            (self.temperature >= 0, "temperature", "use 0 (greedy) or a positive temperature"),
            (0 < self.top_p <= 1, "top_p", "use a value in (0, 1]; 1 = off"),
            (self.top_k >= 0, "top_k", "use 0 (off) or a positive number of tokens"),
            (0 <= self.min_p < 1, "min_p", "use a value in [0, 1); 0 = off"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "use non-empty strings"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise UserError(f"{where}: {name} is {getattr(self, name)!r}. Fix: {fix}")


@dataclass
class Completion:
    """One sampled completion: token ids ``(L,)`` (EOS included when it ended the row), their log-probs ``(L,)``,
    why it ended (eos | stop | length), and its text (special tokens dropped, cut before a stop string)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = ""


@dataclass
class SamplerStats:
    """Counters of the last ``sample`` call: tokens generated, decode steps, seconds (prefill, decode)."""

    tokens: int = 0
    steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    row_steps: int = 0  # rows x steps actually run (finished rows waiting for compaction included)
    extra: dict = field(default_factory=dict)


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
        self._dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm.dtype
        # packed once per call from the live weights (LoRA merged): never older than this call
        self._fast = FastDecoder.build(lm, self._dtype) if self.fast else None
        out: list[list[Completion]] = []
        per_chunk = max(1, self.max_rows // params.n)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less left padding
        results: dict[int, list[Completion]] = {}
        try:
            for s in range(0, len(order), per_chunk):
                chunk = order[s : s + per_chunk]
                gens = [torch.Generator(device="cpu").manual_seed(int(seeds[i])) for i in chunk]
                hook = None if on_token is None else (lambda p, k, t, c=chunk: on_token(c[p], k, t))
                for i, completions in zip(chunk, self._sample_chunk([prompts[i] for i in chunk], params, gens, hook)):
                    results[i] = completions
        finally:
            self.model.train(was_training)
        out = [results[i] for i in range(len(prompts))]
        return out

    def _sample_chunk(
        self, prompts: list[list[int]], params: SamplingParams, gens: list[torch.Generator], on_token=None
    ) -> list[list[Completion]]:
        lm = unwrap_causal_lm(self.model)
        device = next(lm.parameters()).device
        n, width = params.n, max(len(p) for p in prompts)
        ids = torch.tensor([[self.tok.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache(params.max_new_tokens, self._dtype)
        t0 = time.perf_counter()
        logits = lm(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1].float()  # fmt: skip
        self.stats.prefill_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        if n > 1:  # the prompt's cache is shared by its n samples: prefilled once, repeated
            cache.batch_repeat_interleave(n)
            mask, logits = mask.repeat_interleave(n, 0), logits.repeat_interleave(n, 0)
        rows = [(p, k) for p in range(len(prompts)) for k in range(n)]  # (prompt, sample) of each batch row
        next_pos = torch.tensor([len(prompts[p]) for p, _ in rows], device=device)
        tokens: list[list[int]] = [[] for _ in rows]
        logps: list[list[float]] = [[] for _ in rows]
        finish: list[str | None] = [None] * len(rows)
        live = list(range(len(rows)))  # batch row -> index into rows; finished rows stay until compaction
        eos = torch.tensor(self.eos_ids, device=device)
        stop_window = max((len(s) for s in params.stop), default=0) + 3
        for step in range(params.max_new_tokens):
            # rows that finished but wait for compaction draw nothing: a prompt's generator advances only with its
            # own unfinished samples, so its tokens do not depend on the rest of the batch
            drawing = [rows[r][0] if finish[r] is None else None for r in live]
            token, logp = self._draw(logits, params, drawing, gens)
            is_eos = torch.isin(token, eos).tolist()
            token_l, logp_l = token.tolist(), logp.tolist()
            for b, r in enumerate(live):
                if finish[r] is not None:
                    continue
                tokens[r].append(token_l[b])
                logps[r].append(logp_l[b])
                if on_token is not None:
                    on_token(*rows[r], token_l[b])
                if is_eos[b]:
                    finish[r] = "eos"
                elif params.stop and self._hits_stop(tokens[r], params.stop, stop_window):
                    finish[r] = "stop"
                elif step + 1 == params.max_new_tokens:
                    finish[r] = "length"
            done = [b for b, r in enumerate(live) if finish[r] is not None]
            self.stats.steps += 1
            if len(done) == len(live):
                break
            if len(done) >= max(1, self.compact_at * len(live)):
                keep = [b for b, r in enumerate(live) if finish[r] is None]
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_pos, token = mask[index], next_pos[index], token[index]
                live = [live[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            if self._fast is not None:
                with torch.autocast(device.type, enabled=False):
                    logits = self._fast.step(token, next_pos, cache, mask)
            else:
                logits = lm(
                    input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True, decode_attention=True,
                ).logits[:, -1].float()  # fmt: skip
            self.stats.row_steps += len(live)
            next_pos = next_pos + 1
        self.stats.decode_seconds += time.perf_counter() - t0
        self.stats.tokens += sum(map(len, tokens))
        out: list[list[Completion]] = [[] for _ in prompts]
        for r, (p, _) in enumerate(rows):
            out[p].append(Completion(tokens[r], logps[r], finish[r] or "length", self._text(tokens[r], params.stop)))
        return out

    def _draw(
        self, logits: torch.Tensor, params: SamplingParams, row_prompts: list[int | None], gens: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens ``(B,)`` and their log-probs ``(B,)`` from float32 logits ``(B, V)``; ``row_prompts[b]``: the
        prompt of row b, or None for a finished row (token 0, nothing drawn)."""
        if params.temperature == 0:
            token = logits.argmax(-1)
            return token, logits.gather(1, token[:, None])[:, 0] - logits.logsumexp(-1)
        scaled = logits / params.temperature if params.temperature != 1 else logits
        top = scaled.amax(-1, keepdim=True)
        weights = (scaled - top).exp_()  # (B, V) unnormalized probabilities, one pass
        log_total = weights.sum(-1).double().log()  # (B,)
        if params.top_k or params.top_p < 1 or params.min_p > 0:
            weights = filtered_probs(weights.log(), params.top_k, params.top_p, params.min_p)
        # inverse-CDF sampling: one uniform number per row, from the row's prompt's own generator (torch.multinomial
        # draws one exponential per vocabulary entry instead: 49k random numbers per row, a third of a decode step)
        u = torch.zeros(logits.shape[0], dtype=torch.float64)
        by_prompt: dict[int, list[int]] = {}
        for b, p in enumerate(row_prompts):
            if p is not None:
                by_prompt.setdefault(p, []).append(b)
        for p, rows in by_prompt.items():
            u[rows] = torch.rand(len(rows), dtype=torch.float64, generator=gens[p])
        token = sample_categorical(weights, u.to(weights.device))
        token = torch.where(torch.tensor([p is not None for p in row_prompts], device=token.device), token, 0)
        return token, (scaled.gather(1, token[:, None])[:, 0] - top[:, 0] - log_total).float()

    def _hits_stop(self, tokens: list[int], stop: tuple[str, ...], window: int) -> bool:
        tail = self.tok.hf.decode(tokens[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _text(self, tokens: list[int], stop: tuple[str, ...]) -> str:
        text = self.tok.hf.decode(tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        return text[:cut] if cut >= 0 else text


def check_request(prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> None:
    """The checks every sampler backend makes before sampling: valid params, one seed per prompt, no empty prompt."""
    params.validate()
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    if any(not p for p in prompts):
        raise UserError("an empty prompt has no token to condition on. Fix: give every prompt some text")


def sample_categorical(weights: torch.Tensor, u: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Inverse-CDF draws from unnormalized float32 ``weights`` ``(B, V)`` >= 0 with uniforms ``u`` ``(B,)`` in
    [0, 1) -> token ids ``(B,)``. Two levels keep it exact and cheap: sums of blocks of ``block`` tokens (their
    running total in float64) pick a block, a running sum inside that block picks the token; a float32 running sum
    over the whole vocabulary would drift by ~V x 6e-8 of the mass."""
    b, v = weights.shape
    nb = -(-v // block)
    padded = weights if v == nb * block else torch.nn.functional.pad(weights, (0, nb * block - v))
    padded = padded.view(b, nb, block)
    cdf = padded.sum(-1).double().cumsum(-1)  # (B, nb)
    target = u.double() * cdf[:, -1]
    k = torch.searchsorted(cdf, target[:, None], right=True)[:, 0].clamp_(max=nb - 1)  # the block
    before = torch.where(k > 0, cdf.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    inner = padded[torch.arange(b, device=weights.device), k].double().cumsum(-1)  # (B, block)
    j = torch.searchsorted(inner, (target - before)[:, None], right=True)[:, 0].clamp_(max=block - 1)
    return (k * block + j).clamp_(max=v - 1)


def filtered_probs(logp: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Probabilities ``(B, V)`` of the tokens that may be drawn (unnormalized is fine for multinomial): top-k, then
    nucleus (the smallest set of most likely tokens with mass >= top_p), then min-p (p >= min_p * max p)."""
    probs = logp.exp()
    if top_k and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p  # mass of strictly more likely tokens
        sorted_p = sorted_p.masked_fill(mass_before >= top_p * sorted_p.sum(-1, keepdim=True), 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    return probs
