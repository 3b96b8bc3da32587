"""Episodes of an environment on a batch of records, for training (``train.online.environment``) and evaluation
(``eval.accuracy``, ``alignkit eval math --environment``): the same code, so a tool-using model is evaluated the
way it is trained.

    records -> one environment per episode, reset -> opening messages (+ tool schemas) -> prompt ids through the
    chat template -> ``sampler.sample_episodes`` (multi-turn decode keeping the KV cache) with ``respond``: every
    turn that ended steps its episode's environment (a thread pool: the tool calls of different episodes run side
    by side, each with its tool's timeout) -> observation messages -> tokens the model continues from.

``sampler`` is any object with ``sample_episodes(prompts, params, seeds, respond, limits)`` (``generation.Sampler``,
``generation.vllm_backend.VLLMSampler``); ``limits`` is the ``generation.TurnLimits`` it takes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from alignkit.data.tokenize import Tokenizer
from alignkit.errors import UserError
from alignkit.rewards.environments import Environment, load_environment
from alignkit.rewards.tools import ToolCounts

COUNTS = ("calls", "malformed", "errors", "timeouts")
EPISODE_COUNTS = tuple(f"tools/{k}" for k in COUNTS)  # metrics that are counts (the others are per-episode means)


@dataclass
class EpisodeBatch:
    """What ``EpisodeRunner.run`` returns, per record (outer) and episode (inner): the sampler's episodes, the
    environment's reward parts summed over each episode, the text of each episode's last model message, and the
    successful tool calls of each; ``prompts``: the prompt ids of each record; ``counts``: all tool calls."""

    prompts: list[list[int]]
    episodes: list[list]
    parts: list[list[dict[str, float]]]
    final_text: list[list[str]]
    tool_calls: list[list[int]]
    counts: ToolCounts = field(default_factory=ToolCounts)

    def rewards(self) -> list[float]:
        """Each episode's reward (the sum of its parts), flat in record order."""
        return [sum(p.values()) for group in self.parts for p in group]

    def per_part(self) -> dict[str, list[float]]:
        names = sorted({k for group in self.parts for p in group for k in p})
        return {name: [p.get(name, 0.0) for group in self.parts for p in group] for name in names}

    def metrics(self) -> dict[str, float]:
        flat = [ep for group in self.episodes for ep in group]
        n = max(1, len(flat))
        out = {f"tools/{k}": float(getattr(self.counts, k)) for k in COUNTS}
        out["tools/episodes_with_a_call"] = sum(c > 0 for group in self.tool_calls for c in group) / n
        out["episode/turns"] = sum(ep.turns for ep in flat) / n
        out["episode/observation_tokens"] = sum(ep.observation_tokens for ep in flat) / n
        out["episode/turn_limit"] = sum(ep.finish_reason == "turns" for ep in flat) / n
        out["episodes"] = float(len(flat))
        return out


class EpisodeRunner:
    """Runs ``environment`` (a built-in name or import path, with ``args``) episodes for records."""

    def __init__(self, environment: str, args: dict | None, tok: Tokenizer, limits, workers: int = 8):
        self.factory, self._close = load_environment(environment, args)
        self.tok, self.limits = tok, limits
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="alignkit-env")
        self.lock = threading.Lock()  # episodes step on several threads; the counts are shared

    def open(self, records: list[dict], n: int) -> tuple[list[list[int]], list[list[Environment]]]:
        """``n`` fresh environments per record, reset -> (prompt ids per record, environments)."""
        prompts, envs = [], []
        for record in records:
            group = [self.factory() for _ in range(n)]
            opening = [env.reset(record) for env in group]
            if any(o != opening[0] for o in opening[1:]):
                raise UserError("the environment's reset gave different opening messages for one record. "
                                "Fix: make reset(record) depend on the record only")  # fmt: skip
            tools = [t.schema for t in getattr(group[0], "tools", [])]
            prompts.append(self.tok.tool_prompt_ids(opening[0], tools))
            envs.append(group)
        return prompts, envs

    def run(self, sampler, records: list[dict], params, seeds: list[int]) -> EpisodeBatch:
        """``params.n`` episodes per record; record i samples with seed ``seeds[i]``."""
        n = params.n
        prompts, envs = self.open(records, n)
        batch = EpisodeBatch(
            prompts, [], [[{} for _ in range(n)] for _ in records], [["" for _ in range(n)] for _ in records],
            [[0] * n for _ in records],
        )  # fmt: skip

        def step(end) -> list[int] | None:
            text = self.tok.hf.decode(end.tokens, skip_special_tokens=True)
            batch.final_text[end.prompt][end.sample] = text
            if end.finish == "length":  # a message cut mid-way is neither run nor graded
                return None
            result = envs[end.prompt][end.sample].step(text)
            got = batch.parts[end.prompt][end.sample]
            for name, value in result.rewards.items():
                got[name] = got.get(name, 0.0) + float(value)
            c = result.counts
            batch.tool_calls[end.prompt][end.sample] += c.calls - c.errors - c.timeouts
            with self.lock:
                batch.counts.add(c)
            if result.done:
                return None
            ids = self.tok.observation_ids(result.observations)
            return ids if end.tokens and end.tokens[-1] == self.tok.eos_id else [self.tok.eos_id, *ids]

        def respond(ends) -> list[list[int] | None]:
            return list(self.pool.map(step, ends))

        batch.episodes = sampler.sample_episodes(prompts, params, seeds, respond, self.limits)
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._close()
