"""Multi-turn sampling: the model speaks, an environment answers, the model continues the same sequence.

    prompts -> turn 1 (``DecodeBatch``, as single-turn sampling) -> each row that ends its turn leaves the batch
    with its KV cache (``RowCache``) -> ``respond`` (the environment, batched over the rows that ended) gives each
    row its observation tokens, or ends the episode -> the continuing rows' caches are merged, the last drawn token
    and the observation tokens are prefilled on top of them (one forward, no re-prefill of the history) -> turn 2
    decodes from there -> ... until every episode ended, or hit ``max_turns`` or a token limit.

Turns run in rounds (every row's turn t before any row's turn t + 1), so which tokens a row draws depends only on
its own prompt, seed and observations, never on the other rows of the batch: multi-process and resumed runs sample
the same episodes. Turn 1 of prompt i draws from the generator seeded with ``seeds[i]`` (exactly as
``Sampler.sample``); turn t > 1 of its sample k from one seeded with ``turn_seed(seeds[i], k, t)``.

An episode's ``tokens`` are everything after the prompt: the model's tokens (``action_mask`` 1, their sampler
log-probs) and the observation tokens (``action_mask`` 0, log-prob 0). The trainer scores the same sequence in one
forward and trains only where ``action_mask`` is 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from alignkit.generation.cache import GrowingCache, GrowingLayer
from alignkit.generation.decode import DecodeBatch, Request, RowCache
from alignkit.generation.params import SamplerStats, SamplingParams

EPISODE_FINISH = ("eos", "stop", "length", "turns")


@dataclass(frozen=True)
class TurnLimits:
    """``max_turns``: model turns per episode; ``max_tokens_per_turn``: model tokens per turn; ``max_total_tokens``:
    every token after the prompt (the model's and the observations'), i.e. the trained sequence's completion."""

    max_turns: int = 4
    max_tokens_per_turn: int = 128
    max_total_tokens: int = 512


@dataclass
class TurnEnd:
    """A model turn that just ended: which episode (prompt index, sample index), its tokens, why it ended (eos,
    stop, length), its turn number (1-based), and whether an observation can still be shown (turn and token limits
    allow one more turn)."""

    prompt: int
    sample: int
    tokens: list[int]
    finish: str
    turn: int
    can_continue: bool


# (the turns that ended) -> per turn: observation token ids to append (the episode continues), or None (it ended)
Respond = Callable[[list[TurnEnd]], list[list[int] | None]]


@dataclass
class Episode:
    """One sampled episode. Per-token lists are ``(L,)`` over everything after the prompt; ``turns``: the model's
    turns; ``turn_tokens``: each turn's model tokens; ``finish_reason``: eos / stop (the last turn ended and the
    environment ended the episode), length (a token limit cut it) or turns (the environment wanted another turn
    past ``max_turns``)."""

    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    turn_tokens: list[list[int]] = field(default_factory=list)
    finish_reason: str = "length"

    @property
    def turns(self) -> int:
        return len(self.turn_tokens)

    @property
    def observation_tokens(self) -> int:
        return len(self.tokens) - sum(self.action_mask)


def turn_seed(seed: int, sample: int, turn: int) -> int:
    """The seed of turn ``turn`` (> 1) of sample ``sample`` of a prompt seeded ``seed``."""
    return (int(seed) * 1_000_003 + sample * 65_537 + turn * 257) % (1 << 62)


# one decoded turn of one episode: (prompt index, sample index, tokens, log-probs, finish reason)
Ended = tuple[int, int, list[int], list[float], str]


class CachedTurns:
    """Turns decoded by ``DecodeBatch`` with each row's KV cache kept between turns: a continuing row prefills only
    its last token and the observation, on top of its cached history."""

    def __init__(self, batch_factory: Callable[[], DecodeBatch], pad_id: int, stats: SamplerStats):
        self.batch_factory, self.pad_id, self.stats = batch_factory, pad_id, stats
        self.caches: dict[tuple[int, int], RowCache] = {}

    def first(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Ended]:
        requests = [Request(p, params, s) for p, s in zip(prompts, seeds)]
        batch = self._batch({id(r): (i, None) for i, r in enumerate(requests)})
        batch.admit(requests, *batch.prefill(requests, params.max_new_tokens))
        while batch:
            batch.step()
        return [(i, k, r.tokens[k], r.logps[k], r.finish[k]) for i, r in enumerate(requests) for k in range(params.n)]

    def next(self, rows: list[tuple[int, int, list[int], int]], params: list[SamplingParams], seeds: list[int]):
        """``rows``: (prompt, sample, history ids, length of the new block at its end) of each continuing episode."""
        requests = [Request(list(h), p, s) for (_, _, h, _), p, s in zip(rows, params, seeds)]
        caches = [self.caches.pop((i, k)) for i, k, _, _ in rows]
        blocks = [h[-n:] for _, _, h, n in rows]  # the turn's last token (not in the cache yet) + the observation
        batch = self._batch({id(r): (i, k) for r, (i, k, _, _) in zip(requests, rows)})
        capacity = max(p.max_new_tokens for p in params)
        lengths = [len(h) for _, _, h, _ in rows]
        batch.admit(requests, *extend_rows(batch.lm, caches, blocks, lengths, self.pad_id, capacity, self.stats))
        while batch:
            batch.step()
        return [(i, k, r.tokens[0], r.logps[0], r.finish[0]) for r, (i, k, _, _) in zip(requests, rows)]

    def drop(self, prompt: int, sample: int) -> None:
        self.caches.pop((prompt, sample), None)

    def _batch(self, owner: dict) -> DecodeBatch:
        """A fresh batch whose rows hand their caches to ``self.caches`` as they leave; ``owner``: id of a request
        -> (prompt index, sample index, or None for "the row's own sample index")."""
        batch = self.batch_factory()
        batch.compact_at = 0.0

        def keep(request: Request, k: int, row: RowCache) -> None:
            i, sample = owner[id(request)]
            self.caches[(i, k if sample is None else sample)] = row

        batch.on_leave = keep
        return batch


class PrefilledTurns:
    """Turns decoded by any ``sample(prompts, params, seeds) -> [[Completion]]`` (a vLLM engine, whose prefix cache
    makes the re-prefill cheap; or the alignkit sampler, as the oracle of ``CachedTurns``): each turn samples the
    whole history as a new prompt, with the same seeds, so it draws the same tokens."""

    def __init__(self, sample: Callable, rows: Callable | None = None):
        self.sample, self.rows = sample, rows  # rows(prompts, params per prompt, seeds): all rows in one call

    def first(self, prompts, params, seeds) -> list[Ended]:
        out = self.sample(prompts, params, seeds)
        return [(i, k, c.token_ids, c.logprobs, c.finish_reason) for i, group in enumerate(out)
                for k, c in enumerate(group)]  # fmt: skip

    def next(self, rows, params, seeds) -> list[Ended]:
        if self.rows is not None:
            out = self.rows([list(h) for _, _, h, _ in rows], params, seeds)
            return [(i, k, c[0].token_ids, c[0].logprobs, c[0].finish_reason) for (i, k, _, _), c in zip(rows, out)]
        ended = []
        for (i, k, history, _), p, s in zip(rows, params, seeds):  # params differ per row (each one's room)
            c = self.sample([list(history)], p, [s])[0][0]
            ended.append((i, k, c.token_ids, c.logprobs, c.finish_reason))
        return ended

    def drop(self, prompt: int, sample: int) -> None:
        pass


def run_episodes(
    turns: CachedTurns | PrefilledTurns,
    prompts: list[list[int]],
    params: SamplingParams,
    seeds: list[int],
    respond: Respond,
    limits: TurnLimits,
) -> list[list[Episode]]:
    """``params.n`` episodes per prompt (token ids); ``turns`` decodes them (``CachedTurns``: the fast path)."""
    n = params.n
    episodes = [[Episode() for _ in range(n)] for _ in prompts]
    history = [[list(p) for _ in range(n)] for p in prompts]  # prompt + every token so far, per episode
    ended = turns.first(prompts, _turn_params(params, limits, limits.max_total_tokens, n), seeds)
    for turn in range(1, limits.max_turns + 1):
        ends = []
        for i, k, tokens, logps, finish in ended:
            ep = episodes[i][k]
            ep.tokens += tokens
            ep.logps += logps
            ep.action_mask += [1] * len(tokens)
            ep.turn_tokens.append(list(tokens))
            history[i][k] += tokens
            ep.finish_reason = finish = finish or "length"
            more = finish != "length" and limits.max_total_tokens - len(ep.tokens) > 1 and turn < limits.max_turns
            ends.append(TurnEnd(i, k, list(tokens), finish, turn, more))
        observations = respond(ends) if ends else []
        going: list[tuple[int, int, list[int]]] = []
        for end, obs in zip(ends, observations):
            ep = episodes[end.prompt][end.sample]
            if obs is not None and end.finish != "length":
                if turn == limits.max_turns:
                    ep.finish_reason = "turns"
                elif not obs or len(ep.tokens) + len(obs) + 1 > limits.max_total_tokens:
                    ep.finish_reason = "length"
                else:
                    going.append((end.prompt, end.sample, list(obs)))
                    continue
            turns.drop(end.prompt, end.sample)
        if not going:
            break
        rows, turn_params, turn_seeds = [], [], []
        for i, k, obs in going:
            ep = episodes[i][k]
            ep.tokens += obs
            ep.logps += [0.0] * len(obs)
            ep.action_mask += [0] * len(obs)
            history[i][k] += obs
            rows.append((i, k, history[i][k], len(obs) + 1))
            turn_params.append(_turn_params(params, limits, limits.max_total_tokens - len(ep.tokens), 1))
            turn_seeds.append(turn_seed(seeds[i], k, turn + 1))
        ended = turns.next(rows, turn_params, turn_seeds)
    return episodes


def _turn_params(params: SamplingParams, limits: TurnLimits, room: int, n: int) -> SamplingParams:
    """The params of one turn: ``n`` samples, at most ``max_tokens_per_turn`` tokens and what the episode has left
    (``room``)."""
    return replace(params, n=n, max_new_tokens=max(1, min(limits.max_tokens_per_turn, room)))


@torch.no_grad()
def extend_rows(
    lm,
    rows: list[RowCache],
    blocks: list[list[int]],
    lengths: list[int],
    pad_id: int,
    capacity: int,
    stats: SamplerStats | None = None,
) -> tuple[torch.Tensor, GrowingCache, torch.Tensor]:
    """Continue rows: their caches (``RowCache``) merged left-padded, then one forward over each row's new tokens
    ``blocks[i]`` (left-padded to the longest block; ``lengths[i]``: the row's total length after them, so its
    positions are ``lengths[i] - len(blocks[i]) ..``) -> (last logits ``(R, V)`` float32, the merged cache with
    room for ``capacity`` more tokens, mask ``(R, W)``)."""
    device = rows[0].mask.device
    width = max(len(r) for r in rows)
    k = max(len(b) for b in blocks)
    cache = GrowingCache(capacity)
    for layer_index in range(len(rows[0].layers)):
        keys0, values0 = rows[0].layers[layer_index]
        layer = GrowingLayer(capacity + k, keys0.dtype)
        shape = (len(rows), keys0.shape[1], width + k + capacity)
        layer.keys = keys0.new_zeros(*shape, keys0.shape[-1])
        layer.values = values0.new_zeros(*shape, values0.shape[-1])
        for b, row in enumerate(rows):
            keys, values = row.layers[layer_index]
            layer.keys[b, :, width - len(row) : width] = keys[0]
            layer.values[b, :, width - len(row) : width] = values[0]
        layer.length, layer.dtype, layer.device, layer.is_initialized = width, keys0.dtype, device, True
        cache.layers.append(layer)
    history_mask = torch.stack([torch.nn.functional.pad(r.mask, (width - len(r), 0)) for r in rows])
    ids = torch.tensor([[pad_id] * (k - len(b)) + b for b in blocks], device=device)
    block_mask = torch.tensor([[0] * (k - len(b)) + [1] * len(b) for b in blocks], device=device)
    positions = torch.tensor(
        [[max(0, n - len(b)) + max(0, j - (k - len(b))) for j in range(k)] for b, n in zip(blocks, lengths)],
        device=device,
    )
    mask = torch.cat([history_mask.to(block_mask.dtype), block_mask], dim=1)
    t0 = time.perf_counter()
    logits = lm(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1].float()  # fmt: skip
    if stats is not None:
        stats.prefill_seconds += time.perf_counter() - t0
    return logits, cache, mask
