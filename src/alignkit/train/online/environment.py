"""The rollout stage with an environment: prompt items -> ``rewards.episode_runner`` episodes -> trained samples.

A sample's completion is everything after the prompt; its ``action_mask`` is 0 on observation tokens, which the
loss and the KL then skip. The reward is the sum of the environment's reward parts over the episode (the method's
reward functions / reward model, when configured, add their score of the final message: ``OnlineMethod``).
"""

from __future__ import annotations

from alignkit.data import Sample
from alignkit.generation.episodes import TurnLimits
from alignkit.generation.sampler import SamplingParams
from alignkit.rewards.episode_runner import EpisodeRunner


class EpisodeRollout:
    """Episodes for a batch of prompt items (``TokenizedPrompt``) from ``ro.environment``."""

    def __init__(self, ro, tok, sampler):
        limits = TurnLimits(ro.max_turns, ro.max_tokens_per_turn or ro.max_new_tokens, ro.max_new_tokens)
        self.runner, self.sampler, self.tok = (
            EpisodeRunner(ro.environment, ro.environment_args, tok, limits),
            sampler,
            tok,
        )
        self.final_text: list[str] = []

    def run(self, items, params: SamplingParams, seeds: list[int]):
        """-> (samples with action masks, rewards, per-part rewards {name: list}, metrics {name: float})."""
        records = [{**x.columns, "prompt": x.prompt} for x in items]
        batch = self.runner.run(self.sampler, records, params, seeds)
        samples = [
            Sample(batch.prompts[g], ep.tokens, ep.logps, ep.finish_reason,
                   self.tok.hf.decode(ep.tokens, skip_special_tokens=True), g, action_mask=list(ep.action_mask))
            for g, group in enumerate(batch.episodes)
            for ep in group
        ]  # fmt: skip
        self.final_text = [t for group in batch.final_text for t in group]
        return samples, batch.rewards(), batch.per_part(), batch.metrics()

    def close(self) -> None:
        self.runner.close()
