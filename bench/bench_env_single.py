"""A one-turn environment for bench/env_overhead.py: the calculator environment's opening messages (two worked
calls, the question), graded on the single answer, with no tool to call: single-turn GRPO on the same prompts."""

from __future__ import annotations

from alignkit.rewards.environments import ToolEnvironment, load_environment


class OneTurn(ToolEnvironment):
    def __init__(self, **_):
        factory, _close = load_environment("calculator", {"demonstrations": True})
        template = factory()
        super().__init__([], template.runner, instruction=template.instruction)
        self.demonstrations = template.demonstrations
