"""The rollout stage with an environment: records -> opening messages -> multi-turn episodes -> samples + rewards.

``EpisodeRollout`` connects ``rewards.environments`` (what answers the model) to ``Sampler.sample_episodes`` (the
multi-turn decode that keeps each row's KV cache): one environment instance per episode, reset from the prompt's
record; after each model turn every episode that ended one steps its environment (on a thread pool: tool calls of
different episodes run side by side, each with its tool's timeout), and the observation messages are rendered by
the chat template into the tokens the model continues from. A sample's completion is everything after the prompt;
its ``action_mask`` is 0 on observation tokens, which the loss and the KL then skip. The reward is the sum of the
environment's reward parts over the episode (plus the method's reward functions / reward model on the final
message, when configured).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from alignkit.data import Sample
from alignkit.generation.episodes import Episode, PrefilledTurns, TurnEnd, TurnLimits, run_episodes
from alignkit.generation.sampler import SamplingParams
from alignkit.rewards.environments import Environment, load_environment
from alignkit.rewards.tools import ToolCounts

COUNTS = ("calls", "malformed", "errors", "timeouts")


class EpisodeRollout:
    """Episodes for a batch of prompt items (``TokenizedPrompt``) from ``ro.environment``."""

    def __init__(self, ro, tok, sampler, log=print):
        self.factory, self._close = load_environment(ro.environment, ro.environment_args)
        self.tok, self.sampler, self.log = tok, sampler, log
        self.limits = TurnLimits(ro.max_turns, ro.max_tokens_per_turn or ro.max_new_tokens, ro.max_new_tokens)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="alignkit-env")

    def record(self, item) -> dict:
        return {**item.columns, "prompt": item.prompt}

    def open(self, items, n: int) -> tuple[list[list[int]], list[list[Environment]]]:
        """Fresh environments (``n`` per item), reset on the item's record -> (prompt ids per item, environments)."""
        prompts, envs = [], []
        for item in items:
            group = [self.factory() for _ in range(n)]
            opening = [env.reset(self.record(item)) for env in group]
            if any(o != opening[0] for o in opening[1:]):
                raise RuntimeError(f"{item.source}: the environment's reset gave different opening messages for the "
                                   "same record. Fix: make reset(record) deterministic")  # fmt: skip
            tools = [t.schema for t in getattr(group[0], "tools", [])]
            prompts.append(self.tok.tool_prompt_ids(opening[0], tools))
            envs.append(group)
        return prompts, envs

    def run(self, items, params: SamplingParams, seeds: list[int]):
        """-> (samples with action masks, rewards, per-part rewards {name: list}, metrics {name: float})."""
        n = params.n
        prompts, envs = self.open(items, n)
        parts: list[list[dict[str, float]]] = [[{} for _ in range(n)] for _ in items]
        counts = ToolCounts()
        final_text = [["" for _ in range(n)] for _ in items]

        def step(end: TurnEnd) -> list[int] | None:
            text = self.tok.hf.decode(end.tokens, skip_special_tokens=True)
            final_text[end.prompt][end.sample] = text
            if end.finish == "length":  # a message cut mid-way is neither run nor graded
                return None
            result = envs[end.prompt][end.sample].step(text)
            got = parts[end.prompt][end.sample]
            for name, value in result.rewards.items():
                got[name] = got.get(name, 0.0) + float(value)
            counts.add(result.counts)
            if result.done:
                return None
            ids = self.tok.observation_ids(result.observations)
            return ids if end.tokens and end.tokens[-1] == self.tok.eos_id else [self.tok.eos_id, *ids]

        def respond(ends: list[TurnEnd]) -> list[list[int] | None]:
            return list(self.pool.map(step, ends))

        if hasattr(self.sampler, "sample_episodes"):
            episodes = self.sampler.sample_episodes(prompts, params, seeds, respond, self.limits)
        else:  # a backend without cache continuation (vLLM): every turn re-submits the history
            episodes = run_episodes(PrefilledTurns(self.sampler.sample), prompts, params, seeds, respond, self.limits)
        samples = [
            to_sample(prompts[g], ep, self.tok.hf.decode(ep.tokens, skip_special_tokens=True), g)
            for g, group in enumerate(episodes)
            for ep in group
        ]
        names = sorted({k for group in parts for p in group for k in p})
        per_part = {name: [p.get(name, 0.0) for group in parts for p in group] for name in names}
        rewards = [sum(p.values()) for group in parts for p in group]
        flat = [ep for group in episodes for ep in group]
        metrics = {f"tools/{k}": float(getattr(counts, k)) for k in COUNTS}
        metrics["episode/turns"] = sum(ep.turns for ep in flat) / len(flat)
        metrics["episode/observation_tokens"] = sum(ep.observation_tokens for ep in flat) / len(flat)
        metrics["episode/turn_limit"] = sum(ep.finish_reason == "turns" for ep in flat) / len(flat)
        self.final_text = [t for group in final_text for t in group]
        return samples, rewards, per_part, metrics

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._close()


def to_sample(prompt_ids: list[int], ep: Episode, text: str, group: int) -> Sample:
    """A trained sample from an episode: the completion is every token after the prompt, observations masked."""
    finish = ep.finish_reason
    return Sample(prompt_ids, ep.tokens, ep.logps, finish, text, group, action_mask=list(ep.action_mask))
