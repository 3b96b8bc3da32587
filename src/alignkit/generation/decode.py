"""The one decode loop of the code base: rows of many requests decoded together, joining and leaving between steps.

    request (prompt ids, params, seed) -> prefill (left-padded rows, one forward) -> its n rows join the running
    batch (caches merged, left-padded to a common length) -> per step: each row's next-token distribution
    (temperature, then top-k / top-p / min-p) -> a token drawn with the request's own generator -> EOS, stop
    string, length or cancellation ends a row -> finished rows leave the batch.

``Sampler.sample`` (rollouts, evaluation, the CLI) prefills its prompts, admits them and steps until the batch is
empty; the serving scheduler admits new requests between steps while others decode. Both run ``DecodeBatch.step``.

Each request draws from its own ``torch.Generator`` seeded by the caller, one uniform number per unfinished sample
per step, so its tokens do not depend on which other requests share the batch. Reported log-probs are those of the
distribution the token was drawn from *before* truncation: log softmax(logits / temperature), exactly what the
trainer computes for the same tokens (temperature 0 = greedy reports temperature 1). Top-k / top-p / min-p only
decide which tokens may be drawn (as in vLLM's default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignkit.data.tokenize import Tokenizer
from alignkit.generation.cache import GrowingCache, concat_left_padded
from alignkit.generation.params import Completion, SamplerStats, SamplingParams

OnSampleToken = Callable[[int, int], None]  # (sample index, token id)


@dataclass
class RowCache:
    """One row's KV cache as it left a ``DecodeBatch``: per layer (keys, values) ``(1, kv_heads, L, d)`` and its
    attention mask ``(L,)`` (0 at padding inside the row), leading padding dropped. Its last drawn token is not in
    it yet: a multi-turn episode feeds that token first when it continues."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.mask.shape[0])


@dataclass(eq=False)
class Request:
    """One prompt's ``params.n`` samples, filled in as they are decoded. ``on_token(sample, token)`` is called for
    each drawn token; ``cancel()`` ends the unfinished samples at the next step (finish reason "cancelled")."""

    ids: list[int]
    params: SamplingParams
    seed: int
    on_token: OnSampleToken | None = None
    tokens: list[list[int]] = field(init=False)
    logps: list[list[float]] = field(init=False)
    finish: list[str | None] = field(init=False)
    cancelled: bool = field(default=False, init=False)
    first_token_at: float | None = field(default=None, init=False)  # perf_counter of the first drawn token
    admitted_at: float | None = field(default=None, init=False)  # perf_counter when its prefill started
    error: str | None = field(default=None, init=False)  # why it failed (the scheduler sets it), else None

    def __post_init__(self):
        self.gen = torch.Generator(device="cpu").manual_seed(int(self.seed))
        n = self.params.n
        self.tokens, self.logps, self.finish = [[] for _ in range(n)], [[] for _ in range(n)], [None] * n

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    def cancel(self) -> None:
        self.cancelled = True

    def completions(self, tok: Tokenizer) -> list[Completion]:
        return [
            Completion(t, lp, f or "length", completion_text(tok, t, self.params.stop, f))
            for t, lp, f in zip(self.tokens, self.logps, self.finish)
        ]


class DecodeBatch:
    """The running rows of one model: a left-padded KV cache ``(B, kv_heads, L, d)`` per layer, the attention mask
    ``(B, L)``, each row's next position ``(B,)`` and the logits ``(B, V)`` its next token is drawn from.

    ``fast``: a ``FastDecoder`` for decode steps (None = the model's own forward); ``compact_at``: finished rows
    leave once they are this share of the batch (each compaction copies the cache; 0 = at every finish);
    ``trim_padding``: drop leading cache columns that no row attends to any more (a long prompt that left)."""

    def __init__(
        self, lm, tok: Tokenizer, eos_ids: list[int], dtype: torch.dtype, fast=None, compact_at: float = 0.125,
        stats: SamplerStats | None = None, trim_padding: bool = False,
    ):  # fmt: skip
        self.lm, self.tok, self.dtype, self.fast, self.compact_at = lm, tok, dtype, fast, compact_at
        self.device = next(lm.parameters()).device
        self.eos = torch.tensor(sorted(set(eos_ids)), device=self.device)
        self.stats = stats if stats is not None else SamplerStats()
        self.trim_padding = trim_padding
        self.rows: list[tuple[Request, int]] = []  # (request, sample index) of each batch row
        self.cache: GrowingCache | None = None
        self.mask = self.next_pos = self.logits = None
        # called as (request, sample index, RowCache) for each row leaving the batch (multi-turn episodes keep it)
        self.on_leave: Callable[[Request, int, RowCache], None] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def prefill(self, requests: list[Request], capacity: int) -> tuple[torch.Tensor, GrowingCache, torch.Tensor]:
        """One forward over the requests' prompts, left-padded to the longest -> (last logits ``(R, V)`` float32,
        their cache with room for ``capacity`` more tokens, mask ``(R, L)``)."""
        width = max(len(r.ids) for r in requests)
        pad = self.tok.pad_id
        ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in requests], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in requests], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache(capacity, self.dtype)
        t0 = time.perf_counter()
        logits = self.lm(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1].float()  # fmt: skip
        self.stats.prefill_seconds += time.perf_counter() - t0
        return logits, cache, mask

    def admit(self, requests: list[Request], logits: torch.Tensor, cache: GrowingCache, mask: torch.Tensor) -> None:
        """Add prefilled requests (``logits`` ``(R, V)``, ``cache`` and ``mask`` ``(R, L)`` from ``prefill`` or a
        chunked prefill): each prompt's cache is shared by its n samples (prefilled once, repeated)."""
        ns = [r.params.n for r in requests]
        if max(ns) > 1:
            if len(set(ns)) == 1:
                cache.batch_repeat_interleave(ns[0])
                mask, logits = mask.repeat_interleave(ns[0], 0), logits.repeat_interleave(ns[0], 0)
            else:
                counts = torch.tensor(ns, device=self.device)
                index = torch.arange(len(ns), device=self.device).repeat_interleave(counts)
                cache.batch_select_indices(index)
                mask, logits = mask[index], logits[index]
        rows = [(r, k) for r in requests for k in range(r.params.n)]
        next_pos = torch.tensor([len(r.ids) for r, _ in rows], device=self.device)
        if not self.rows:
            self.cache, self.mask, self.next_pos, self.logits = cache, mask, next_pos, logits
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            self.cache = concat_left_padded([self.cache, cache], width)
            self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
            self.next_pos = torch.cat([self.next_pos, next_pos])
            self.logits = torch.cat([self.logits, logits])
        self.rows += rows

    @torch.no_grad()
    def step(self) -> list[Request]:
        """Draw one token for every unfinished row, end rows (EOS, stop string, length, cancelled), drop finished
        rows when enough have finished, and run the forward for the next step -> the requests that finished."""
        t0 = time.perf_counter()
        for r, k in self.rows:
            if r.cancelled and r.finish[k] is None:
                r.finish[k] = "cancelled"
        drawing = [r if r.finish[k] is None else None for r, k in self.rows]
        token, logp = self._draw(drawing)
        is_eos = torch.isin(token, self.eos).tolist()
        token_l, logp_l = token.tolist(), logp.tolist()
        finished: list[Request] = []
        now = time.perf_counter()
        for b, (r, k) in enumerate(self.rows):
            if r.finish[k] is not None:
                continue
            r.tokens[k].append(token_l[b])
            r.logps[k].append(logp_l[b])
            r.first_token_at = r.first_token_at or now
            if r.on_token is not None:
                r.on_token(k, token_l[b])
            if is_eos[b]:
                r.finish[k] = "eos"
            elif r.params.stop and self._hits_stop(r.tokens[k], r.params.stop):
                r.finish[k] = "stop"
            elif len(r.tokens[k]) >= r.params.max_new_tokens:
                r.finish[k] = "length"
        for r in dict.fromkeys(r for r, _ in self.rows):  # each request once, in batch order
            if r.done:
                finished.append(r)
                self.stats.tokens += sum(map(len, r.tokens))
        self.stats.steps += 1
        keep = [b for b, (r, k) in enumerate(self.rows) if r.finish[k] is None]
        if self.on_leave is not None:  # before the rows leave: their caches go to the caller
            for b in sorted(set(range(len(self.rows))) - set(keep)):
                self.on_leave(*self.rows[b], self._row_cache(b))
        if not keep:
            self.rows, self.cache, self.mask, self.next_pos, self.logits = [], None, None, None, None
            self.stats.decode_seconds += time.perf_counter() - t0
            return finished
        done = len(self.rows) - len(keep)
        leave = done >= max(1, self.compact_at * len(self.rows)) or (done and self.on_leave is not None)
        if leave or any(r.cancelled for r, _ in self.rows):
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask, self.next_pos, token = self.mask[index], self.next_pos[index], token[index]
            self.rows = [self.rows[b] for b in keep]
            if self.trim_padding:
                self._trim()
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        if self.fast is not None:
            with torch.autocast(self.device.type, enabled=False):
                self.logits = self.fast.step(token, self.next_pos, self.cache, self.mask)
        else:
            self.logits = self.lm(
                input_ids=token[:, None], attention_mask=self.mask, position_ids=self.next_pos[:, None],
                past_key_values=self.cache, use_cache=True, decode_attention=True,
            ).logits[:, -1].float()  # fmt: skip
        self.stats.row_steps += len(self.rows)
        self.next_pos = self.next_pos + 1
        self.stats.decode_seconds += time.perf_counter() - t0
        return finished

    def _row_cache(self, b: int) -> RowCache:
        """A copy of row ``b``'s cache without its leading padding (the cache and mask are ``L`` wide here)."""
        used = self.mask[b].nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        layers = [(_row(x.keys, b, start, x.length), _row(x.values, b, start, x.length)) for x in self.cache.layers]
        return RowCache(layers, self.mask[b, start:].clone())

    def _trim(self, least: int = 16) -> None:
        """Drop leading cache columns masked out in every row (kept while fewer than ``least``: a copy-free view)."""
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start >= least:
            self.cache.crop_left(start)
            self.mask = self.mask[:, start:]

    def _draw(self, drawing: list[Request | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens ``(B,)`` and log-probs ``(B,)`` of every row; rows that share draw settings draw together."""
        groups: dict[tuple, list[int]] = {}
        for b, (r, _) in enumerate(self.rows):
            groups.setdefault(r.params.draw_key, []).append(b)
        if len(groups) == 1:
            return draw_tokens(self.logits, self.rows[0][0].params, drawing)
        token = torch.zeros(len(self.rows), dtype=torch.long, device=self.device)
        logp = torch.zeros(len(self.rows), device=self.device)
        for rows in groups.values():
            index = torch.tensor(rows, device=self.device)
            t, lp = draw_tokens(self.logits[index], self.rows[rows[0]][0].params, [drawing[b] for b in rows])
            token[index], logp[index] = t, lp
        return token, logp

    def _hits_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        tail = self.tok.hf.decode(tokens[-(max(len(s) for s in stop) + 3) :], skip_special_tokens=True)
        return any(s in tail for s in stop)


def _row(buffer: torch.Tensor, b: int, start: int, end: int) -> torch.Tensor:
    """Positions ``start:end`` of row ``b`` of a ``(B, heads, capacity, d)`` buffer, copied: ``(1, heads, n, d)``."""
    return buffer[b : b + 1, :, start:end].clone()


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


def draw_tokens(
    logits: torch.Tensor, params: SamplingParams, drawing: list[Request | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens ``(B,)`` and their log-probs ``(B,)`` from float32 logits ``(B, V)``; ``drawing[b]``: the request
    of row b, or None for a finished row (token 0, nothing drawn from any generator)."""
    if params.temperature == 0:
        token = logits.argmax(-1)
        return token, logits.gather(1, token[:, None])[:, 0] - logits.logsumexp(-1)
    scaled = logits / params.temperature if params.temperature != 1 else logits
    top = scaled.amax(-1, keepdim=True)
    weights = (scaled - top).exp_()  # (B, V) unnormalized probabilities, one pass
    log_total = weights.sum(-1).double().log()  # (B,)
    if params.top_k or params.top_p < 1 or params.min_p > 0:
        weights = filtered_probs(weights.log(), params.top_k, params.top_p, params.min_p)
    # inverse-CDF sampling: one uniform number per row, from the row's request's own generator (torch.multinomial
    # draws one exponential per vocabulary entry instead: 49k random numbers per row, a third of a decode step)
    u = torch.zeros(logits.shape[0], dtype=torch.float64)
    by_request: dict[Request, list[int]] = {}
    for b, r in enumerate(drawing):
        if r is not None:
            by_request.setdefault(r, []).append(b)
    for r, rows in by_request.items():
        u[rows] = torch.rand(len(rows), dtype=torch.float64, generator=r.gen)
    token = sample_categorical(weights, u.to(weights.device))
    token = torch.where(torch.tensor([r is not None for r in drawing], device=token.device), token, 0)
    return token, (scaled.gather(1, token[:, None])[:, 0] - top[:, 0] - log_total).float()


def completion_text(tok: Tokenizer, tokens: list[int], stop: tuple[str, ...], finish: str | None = None) -> str:
    """The text of generated ``tokens``: special tokens dropped, cut before the first stop string; a completion cut
    by length or cancellation drops a half-generated character at its end instead of storing U+FFFD."""
    text = tok.hf.decode(tokens, skip_special_tokens=True)
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    text = text[:cut] if cut >= 0 else text
    if finish in ("length", "cancelled", None):
        text = text.rstrip("\ufffd")
    return text


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
