"""Tools a model calls during a rollout: a registry of Python functions, the parser of the calls models write, and
the runner that executes them with a timeout each.

A tool is a typed, documented function; its JSON schema (``transformers.utils.get_json_schema``, the schema the
chat templates of tool-calling models take) is what the model is shown. A call is written the way Hermes / Qwen2.5
templates teach::

    <tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>

Small models get the format half right, so ``parse_tool_calls`` accepts: a missing closing tag, single quotes and
Python literals, trailing commas, a missing closing brace, ``parameters`` for ``arguments``, arguments given as a
JSON string or (for a one-parameter tool) as a bare value, a code fence around the JSON, and function-call syntax
(``<tool_call>calculator("12 * 7")</tool_call>``). What still does not parse becomes a ``MalformedCall``: the
environment shows the model the reason as an observation, it never raises.

``ToolRunner`` runs calls in a thread pool; a call past its tool's timeout is abandoned (its result never used;
the step goes on, the timeout counted). Tools that execute code use ``rewards.sandbox`` (``python_tool``), so a
call gets the sandbox's guarantees: no network, no files of ours, CPU/memory/process limits, killed at timeout.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import UserError

MAX_RESULT_CHARS = 400  # an observation longer than this is cut (the model's context is small)


@dataclass
class Tool:
    """A function the model may call: ``name``, the function, its JSON schema (``{"type": "function",
    "function": {...}}``) and the seconds one call may take."""

    name: str
    function: Callable[..., Any]
    schema: dict
    timeout: float = 5.0

    @property
    def parameters(self) -> list[str]:
        return list(self.schema["function"].get("parameters", {}).get("properties", {}))


def make_tool(function: Callable[..., Any], name: str | None = None, timeout: float = 5.0) -> Tool:
    """A ``Tool`` from a type-hinted function with a Google-style docstring (``Args:`` describes each parameter)."""
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(function)
    except Exception as e:  # transformers raises its own DocstringParsingException / TypeHintParsingException
        raise UserError(
            f"tool {getattr(function, '__name__', function)!r}: no schema can be made ({e}). Fix: give every "
            "parameter a type hint and describe it under 'Args:' in the docstring"
        ) from None
    if name:
        schema["function"]["name"] = name
    return Tool(schema["function"]["name"], function, schema, timeout)


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class MalformedCall:
    """A call that could not be understood: the text the model wrote and why (shown to the model)."""

    text: str
    reason: str


_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```(?:json|python)?\s*|\s*```$")
_CALL = re.compile(r"^([A-Za-z_]\w*)\s*\((.*)\)\s*;?$", re.DOTALL)


def parse_tool_calls(text: str, tools: dict[str, Tool]) -> list[ToolCall | MalformedCall]:
    """The calls in a model message: every ``<tool_call>`` block (the closing tag optional), or else a message that
    is only a JSON object with a ``name`` (Llama 3 style). [] when the message calls no tool (a final answer)."""
    blocks = [m.group(1) for m in _BLOCK.finditer(text)]
    if not blocks:
        stripped = _FENCE.sub("", text.strip())
        if stripped.startswith("{") and re.search(r"[\"']name[\"']\s*:", stripped):
            blocks = [stripped]
    return [_parse_one(block, tools) for block in blocks]


def _parse_one(block: str, tools: dict[str, Tool]) -> ToolCall | MalformedCall:
    raw = _FENCE.sub("", block.strip()).strip()
    if not raw:
        return MalformedCall(block, "the tool call is empty")
    value = _loads(raw)
    if value is None:
        call = _CALL.match(raw)
        if call is None:
            return MalformedCall(raw, 'not JSON. Write {"name": "<tool>", "arguments": {...}}')
        name, args_text = call.groups()
        if name not in tools:
            return MalformedCall(raw, f"there is no tool named {name!r} (tools: {', '.join(sorted(tools))})")
        arguments = _call_arguments(args_text, tools[name])
        if arguments is None:
            return MalformedCall(raw, f"the arguments of {name}(...) are not Python literals")
        return ToolCall(name, arguments)
    if not isinstance(value, dict):
        return MalformedCall(raw, 'the call must be an object {"name": ..., "arguments": {...}}')
    function = value.get("function")
    if isinstance(function, dict):  # OpenAI style {"function": {"name", "arguments"}}
        value = function
    name = value.get("name", function if isinstance(function, str) else None)
    if not isinstance(name, str) or not name:
        return MalformedCall(raw, 'the call has no "name"')
    if name not in tools:
        return MalformedCall(raw, f"there is no tool named {name!r} (tools: {', '.join(sorted(tools))})")
    arguments = next((value[k] for k in ("arguments", "parameters", "args", "input") if k in value), {})
    if isinstance(arguments, str):
        parsed = _loads(arguments)
        arguments = parsed if isinstance(parsed, dict) else arguments
    if not isinstance(arguments, dict):
        names = tools[name].parameters
        if len(names) != 1:
            return MalformedCall(raw, f'"arguments" must be an object with {", ".join(names) or "no keys"}')
        arguments = {names[0]: arguments}
    return ToolCall(name, arguments)


def _loads(text: str) -> Any:
    """JSON, else a Python literal, else JSON after the usual repairs (trailing commas, missing closing braces);
    None when nothing parses."""
    attempts = [text, re.sub(r",\s*([}\]])", r"\1", text)]
    missing = text.count("{") - text.count("}")
    if 0 < missing <= 3:
        attempts.append(attempts[-1] + "}" * missing)
    for attempt in attempts:
        for parse in (json.loads, _literal):
            try:
                return parse(attempt)
            except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
                continue
    return None


def _literal(text: str) -> Any:
    if len(text) > 10_000:
        raise ValueError("too long")
    return ast.literal_eval(text.replace("true", "True").replace("false", "False").replace("null", "None"))


def _call_arguments(text: str, tool: Tool) -> dict | None:
    """``name(args)`` arguments -> {parameter: value}: positional ones in the schema's order, keywords by name."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return None
    return {**dict(zip(tool.parameters, args)), **kwargs}


@dataclass
class ToolCounts:
    """What the tool calls of one step did: calls run, malformed ones, errors raised, timeouts."""

    calls: int = 0
    malformed: int = 0
    errors: int = 0
    timeouts: int = 0

    def add(self, other: ToolCounts) -> None:
        for name in ("calls", "malformed", "errors", "timeouts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ToolRunner:
    """Runs parsed calls on a shared thread pool, each with its tool's timeout -> observation texts."""

    tools: dict[str, Tool]
    workers: int = 4
    max_result_chars: int = MAX_RESULT_CHARS
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="alignkit-tool")
            return self._pool

    def run(self, calls: list[ToolCall | MalformedCall]) -> tuple[list[str], ToolCounts]:
        """Observation text of each call (a result, or ``error: ...``) and the counts."""
        counts = ToolCounts()
        futures = []
        for call in calls:
            if isinstance(call, MalformedCall):
                futures.append(None)
            else:
                futures.append(self.pool().submit(self.tools[call.name].function, **call.arguments))
        out = []
        for call, future in zip(calls, futures):
            if future is None:
                counts.malformed += 1
                out.append(f"error: {call.reason}")
                continue
            counts.calls += 1
            tool = self.tools[call.name]
            try:
                result = future.result(timeout=tool.timeout)
            except FutureTimeout:
                future.cancel()
                counts.timeouts += 1
                out.append(f"error: {tool.name} took longer than {tool.timeout:g} s and was stopped")
                continue
            except TypeError as e:  # wrong or missing arguments
                counts.errors += 1
                out.append(f"error: {tool.name}: {e}")
                continue
            except Exception as e:
                counts.errors += 1
                out.append(f"error: {type(e).__name__}: {e}")
                continue
            out.append(_cut(str(result), self.max_result_chars))
        return out, counts

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


# --------------------------------------------------------------------------------------------- built-in tools

_OPERATORS: dict[type, Callable] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}  # fmt: skip
_LIMIT = 10**15  # larger intermediate values are refused (no 9**9**9 in the training process)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Args:
        expression: The expression, e.g. "(12 + 7) * 3".
    """
    text = str(expression).strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    text = text.rstrip("=").strip()
    if not text or len(text) > 200:
        raise ValueError("give an expression of at most 200 characters")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(f"cannot read {text!r} as arithmetic") from None
    value = _evaluate(tree)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("the result is not a finite number")
        if value.is_integer():
            return str(int(value))
        return f"{value:.6g}"
    return str(value)


def _evaluate(node: ast.AST) -> int | float:
    """The value of an arithmetic AST: numbers and the operators above only (no names, calls or attributes)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        value = _OPERATORS[type(node.op)](_evaluate(node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("the power is too large")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        value = _OPERATORS[type(node.op)](left, right)
    else:
        raise ValueError(f"only numbers and + - * / // % ** are allowed, not {ast.unparse(node)!r}")
    if isinstance(value, complex) or abs(value) > _LIMIT:
        raise ValueError("the number is too large")
    return value


def python_tool(timeout: float = 5.0, memory_mb: int = 256, allow_unsafe: bool = False) -> Tool:
    """A ``python`` tool: the code runs in ``rewards.sandbox`` (no network, no files of ours, limits, killed at
    ``timeout``); the observation is its stdout (and the end of stderr when it failed)."""
    from alignkit.rewards.sandbox import run_python

    def python(code: str) -> str:
        """Run a Python program and return what it prints.

        Args:
            code: The program; print the values you need.
        """
        result = run_python(str(code), timeout=timeout, memory_mb=memory_mb, allow_unsafe=allow_unsafe)
        if result.status == "timeout":
            raise TimeoutError(f"the program ran past {timeout:g} s")
        out = result.stdout.strip()
        if result.status != "ok":
            err = result.stderr.strip().splitlines()
            return (out + "\n" if out else "") + "error: " + (err[-1] if err else result.status)
        return out or "(no output; print the result)"

    return make_tool(python, timeout=timeout + 2.0)


BUILTIN_TOOLS: dict[str, Callable[..., Tool]] = {
    "calculator": lambda timeout=5.0, **_: make_tool(calculator, timeout=timeout),
    "python": lambda timeout=5.0, allow_unsafe=False, **_: python_tool(timeout, allow_unsafe=allow_unsafe),
}
