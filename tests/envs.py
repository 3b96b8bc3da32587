"""Environments for the multi-turn tests (importable as ``envs:Name`` by the runs; tests/ is on sys.path)."""

from __future__ import annotations

from alignkit.rewards.environments import Environment, StepResult, prompt_messages


class Chatter(Environment):
    """Answers every model message with a user message ``the weather is`` until the model has spoken ``turns``
    times. Reward part ``yes``: the share of the word "yes" among the words of all the model's messages (the word
    model learns it in a few steps); ``turns``: 0.1 per turn the episode finished inside."""

    def __init__(self, turns: int = 2):
        self.turns, self.said = turns, []

    def reset(self, record: dict) -> list[dict]:
        self.said = []
        return prompt_messages(record)

    def step(self, message: str) -> StepResult:
        self.said.append(message)
        if len(self.said) < self.turns:
            return StepResult([{"role": "user", "content": "the weather is"}], {}, False)
        words = " ".join(self.said).split()
        return StepResult([], {"yes": words.count("yes") / max(1, len(words))}, True)
