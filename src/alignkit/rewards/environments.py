"""Environments of multi-turn rollouts: what the model is told, what answers its messages, and the reward.

The protocol (the one TRL's ``environment_factory``, OpenRLHF's agent executor and verl's agent loop share, small):

    env = factory()                      # one instance per episode
    messages = env.reset(record)         # the opening messages (system, user, ...) from a data record
    result = env.step(model_message)     # -> StepResult(observations, rewards, done, counts)

``observations`` are chat messages (role ``tool`` for tool results, ``user`` for anything else) shown to the model
before its next turn; ``rewards`` are named parts, summed over the episode into the sample's reward; ``done`` ends
the episode. The rollout stage (``train.online.environment``) owns the turn and token limits: an episode cut by a
limit keeps the rewards it earned so far. ``tools``: the ``Tool``s the opening prompt shows the model (the chat
template's tool format, or a system message in the Hermes format when the template has none).

Built-in environments (``rollout.environment``):

- ``calculator``: ``ToolEnvironment`` with the calculator tool (arithmetic, no code runs; ``demonstrations: true``
  shows two worked calls first, which a 135M model needs to use it at all);
- ``python``: ``ToolEnvironment`` with a Python tool run in ``rewards.sandbox``;
- ``arithmetic_steps``: ``StepsEnvironment``, a chain of operations the model keeps a running total through,
  one observation per step, the final number verified.

Users plug in their own by import path, as reward functions: ``my_envs:MyEnv`` or ``path/to/envs.py:MyEnv`` (a
class or a factory; ``rollout.environment_args`` are passed as keyword arguments).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import UserError
from alignkit.rewards.tools import BUILTIN_TOOLS, Tool, ToolCounts, ToolRunner, parse_tool_calls
from alignkit.rewards.verifiers.math import grade


@dataclass
class StepResult:
    """What an environment answers to one model message."""

    observations: list[dict] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=dict)
    done: bool = False
    counts: ToolCounts = field(default_factory=ToolCounts)


class Environment:
    """Base class (and protocol) of an environment: one instance per episode."""

    tools: list[Tool] = []

    def reset(self, record: dict) -> list[dict]:
        """The opening messages of an episode on ``record`` (a data record: every field is available)."""
        raise NotImplementedError

    def step(self, message: str) -> StepResult:
        """The model's message (its turn's text) -> observations, reward parts, done."""
        raise NotImplementedError


def prompt_messages(record: dict, field_name: str = "prompt") -> list[dict]:
    """A record's prompt as messages: a text prompt becomes one user message."""
    prompt = record.get(field_name)
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        return [dict(m) for m in prompt]
    raise UserError(f"the record's {field_name!r} is {type(prompt).__name__}, not text or a list of messages. "
                    f"Fix: give every record a {field_name!r}")  # fmt: skip


TOOL_INSTRUCTION = (
    'You can use tools. To call one, write <tool_call>{{"name": NAME, "arguments": {{...}}}}</tool_call> and '
    "stop; its result comes back to you. When you know the answer, reply without a tool call. {extra}"
)


# Worked exchanges (written for this project) that show a small model the call format in its own context: with
# them SmolLM2-135M-Instruct calls the calculator on every problem greedily; without them, never.
DEMONSTRATIONS = {
    "calculator": [
        ("Sam has 6 boxes with 7 pens in each box. How many pens does Sam have?", 'calculator("6 * 7")', "42"),
        ("Lea had 35 stamps and gave 12 away. How many stamps are left?", 'calculator("35 - 12")', "23"),
    ],
    "python": [
        ("A farm has 14 rows of 9 trees. How many trees are there?", 'python("print(14 * 9)")', "126"),
        ("Omar splits 96 cards equally among 8 friends. How many does each get?", 'python("print(96 // 8)")', "12"),
    ],
}


def demonstration_messages(tool: str) -> list[dict]:
    """The worked exchanges of ``tool``: user question, assistant call, tool result, assistant answer."""
    out = []
    for question, call, result in DEMONSTRATIONS.get(tool, []):
        out += [{"role": "user", "content": question},
                {"role": "assistant", "content": f"<tool_call>{call}</tool_call>"},
                {"role": "tool", "content": result}, {"role": "assistant", "content": f"Answer: {result}"}]  # fmt: skip
    return out


class ToolEnvironment(Environment):
    """A question answered with tools. A message with tool calls gets their results (malformed calls get the
    reason); the first message without a call is the final answer, graded against the record's ``answer_field``
    (``rewards.verifiers.math``): reward part ``correct`` 1 or 0. ``tool_bonus``: an extra reward part
    ``used_tool`` for a correct answer reached with at least one successful call (0 = none). ``demonstrations``:
    put the tools' worked exchanges (``DEMONSTRATIONS``) before the question."""

    def __init__(self, tools: list[Tool], runner: ToolRunner, answer_field: str = "answer",
                 instruction: str | None = None, tool_bonus: float = 0.0, demonstrations: bool = False):  # fmt: skip
        self.tools, self.runner, self.answer_field = tools, runner, answer_field
        self.instruction = instruction if instruction is not None else TOOL_INSTRUCTION.format(extra="")
        self.tool_bonus = tool_bonus
        self.demonstrations = [m for t in tools for m in demonstration_messages(t.name)] if demonstrations else []
        self.answer: Any = None
        self.used = 0

    def reset(self, record: dict) -> list[dict]:
        self.answer, self.used = record.get(self.answer_field), 0
        messages = prompt_messages(record)
        at = 1 if messages[0]["role"] == "system" else 0
        messages[at:at] = [dict(m) for m in self.demonstrations]
        if self.instruction:
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + self.instruction}
            else:
                messages.insert(0, {"role": "system", "content": self.instruction})
        return messages

    def step(self, message: str) -> StepResult:
        calls = parse_tool_calls(message, {t.name: t for t in self.tools})
        if not calls:
            correct = float(self.answer is not None and grade(message, self.answer).reward == 1.0)
            rewards = {"correct": correct}
            if self.tool_bonus:
                rewards["used_tool"] = self.tool_bonus * correct * (self.used > 0)
            return StepResult([], rewards, True)
        results, counts = self.runner.run(calls)
        self.used += counts.calls - counts.errors - counts.timeouts
        return StepResult([{"role": "tool", "content": r} for r in results], {}, False, counts)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORDS = {"+": "Add {v}.", "-": "Subtract {v}.", "*": "Multiply by {v}.", "//": "Divide by {v} (whole result)."}


class StepsEnvironment(Environment):
    """Multi-step arithmetic: the record holds ``start`` and ``steps`` (a list of ``[op, value]`` with op one of
    + - * //). The opening message gives the start and the first operation; each observation gives the next. The
    model answers each with the running number (its last number counts). Reward parts: ``steps`` (share of
    intermediate numbers right) and ``correct`` (the final number, 1 or 0)."""

    def __init__(self, instruction: str | None = None):
        self.instruction = instruction or ("Keep a running number. Apply each operation I give you to it and reply "
                                           "with the new number only.")  # fmt: skip
        self.values: list[int] = []
        self.ops: list[tuple[str, int]] = []
        self.turn = 0
        self.right = 0

    def reset(self, record: dict) -> list[dict]:
        try:
            value = int(record["start"])
            self.ops = [(str(op), int(v)) for op, v in record["steps"]]
        except (KeyError, TypeError, ValueError):
            raise UserError("arithmetic_steps: a record needs 'start' (a number) and 'steps' ([[op, number], ...]). "
                            "Fix: write records with alignkit.data.arithmetic.chain_records") from None  # fmt: skip
        if not self.ops or any(op not in _WORDS for op, _ in self.ops):
            raise UserError(f"arithmetic_steps: steps {record['steps']!r}: use a non-empty list of [op, number] "
                            f"with op one of {', '.join(_WORDS)}")  # fmt: skip
        self.values = []
        for op, v in self.ops:
            value = {"+": value + v, "-": value - v, "*": value * v, "//": value // v if v else value}[op]
            self.values.append(value)
        self.turn = self.right = 0
        first = _WORDS[self.ops[0][0]].format(v=self.ops[0][1])
        return [{"role": "system", "content": self.instruction},
                {"role": "user", "content": f"Start with {int(record['start'])}. {first}"}]  # fmt: skip

    def step(self, message: str) -> StepResult:
        numbers = _NUMBER.findall(message)
        said = numbers[-1] if numbers else None
        ok = said is not None and float(said) == self.values[self.turn]
        self.right += ok
        self.turn += 1
        if self.turn == len(self.ops):
            return StepResult([], {"steps": self.right / len(self.ops), "correct": float(ok)}, True)
        op, v = self.ops[self.turn]
        return StepResult([{"role": "user", "content": _WORDS[op].format(v=v)}], {}, False)


EnvironmentFactory = Callable[[], Environment]
BUILTIN_ENVIRONMENTS = ("calculator", "python", "arithmetic_steps")


def load_environment(spec: str, args: dict | None = None) -> tuple[EnvironmentFactory, Callable[[], None]]:
    """(a factory of fresh environments, a close function) for ``rollout.environment``: a built-in name or an
    import path (``module:Name`` / ``file.py:Name``, a class or a factory called with ``args``)."""
    args = dict(args or {})
    if spec in ("calculator", "python"):
        timeout = float(args.pop("tool_timeout", 5.0))
        allow_unsafe = bool(args.pop("allow_unsafe", False))
        if spec == "python" and not allow_unsafe:
            from alignkit.rewards.sandbox import sandbox_backend

            sandbox_backend()  # fail closed now, with the fix, rather than at the first call
        tools = [BUILTIN_TOOLS[spec](timeout=timeout, allow_unsafe=allow_unsafe)]
        runner = ToolRunner({t.name: t for t in tools}, workers=int(args.pop("tool_workers", 4)))
        _check_args(spec, args, ("answer_field", "instruction", "tool_bonus", "demonstrations"))
        return (lambda: ToolEnvironment(tools, runner, **args)), runner.close
    if spec == "arithmetic_steps":
        _check_args(spec, args, ("instruction",))
        return (lambda: StepsEnvironment(**args)), lambda: None
    from alignkit.rewards.functions import load_object

    target = load_object(spec, "environment", "a class or factory of Environment")
    try:
        probe = target(**args)
    except TypeError as e:
        raise UserError(f"environment {spec!r}: calling it with rollout.environment_args failed ({e}). "
                        "Fix: match its parameters") from None  # fmt: skip
    missing = [m for m in ("reset", "step") if not callable(getattr(probe, m, None))]
    if missing:
        raise UserError(f"environment {spec!r} has no {' or '.join(missing)} method. Fix: implement "
                        "reset(record) -> messages and step(message) -> StepResult")  # fmt: skip
    close = getattr(probe, "close", None)
    return (lambda: target(**args)), (close if callable(close) else (lambda: None))


def _check_args(spec: str, args: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        allowed += ("tool_timeout", "tool_workers", "allow_unsafe") if spec != "arithmetic_steps" else ()
        raise UserError(f"environment {spec!r}: unknown rollout.environment_args {unknown}. "
                        f"Fix: use {', '.join(allowed)}")  # fmt: skip
