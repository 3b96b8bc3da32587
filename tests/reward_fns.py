"""Reward functions for the runner tests, importable by spawned worker processes (tests/ is on their sys.path).

``behave``: each completion says what to do: a number -> that reward, "none" -> None, "hang" -> sleep forever,
"boom" -> raise, "exit" -> kill the worker process, "fork-hang" -> start a grandchild (its pid written to the
``pidfile`` column) and sleep forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def behave(prompts, completions, **_):
    out = []
    for i, c in enumerate(completions):
        if c == "hang":
            time.sleep(3600)
        elif c == "boom":
            raise ZeroDivisionError("boom on purpose")
        elif c == "exit":
            os._exit(1)
        elif c == "fork-hang":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            with open(_["pidfile"][i], "w") as f:
                f.write(str(child.pid))
            time.sleep(3600)
        out.append(None if c == "none" else float(c))
    return out


def length(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def answer_is(prompts, completions, answer, **_):
    """1.0 where the completion equals the ``answer`` column; None where the answer is None."""
    return [None if a is None else float(c == a) for c, a in zip(completions, answer)]


def always_none(prompts, completions, **_):
    return [None] * len(completions)


def wrong_length(prompts, completions, **_):
    return [1.0] * (len(completions) + 1)


def not_a_number(prompts, completions, **_):
    return ["1.0" if c == "bad" else 1.0 for c in completions]


def environment(prompts, completions, **_):
    """OMP_NUM_THREADS, and this process's pid."""
    return [float(os.environ.get("OMP_NUM_THREADS", "-1")) if c == "omp" else float(os.getpid()) for c in completions]


NOT_CALLABLE = 3


def yes_share(prompts, completions, **_):
    """Share of the completion's words that are "yes": a reward the tiny models can learn in a few steps."""
    return [sum(w == "yes" for w in c.split()) / max(1, len(c.split())) for c in completions]


def hang_where(prompts, completions, hang=None, **_):
    """Sleeps forever for records whose ``hang`` column is true; else the ``yes_share``."""
    if any(hang or []):
        time.sleep(3600)
    return yes_share(prompts, completions)


def none_where(prompts, completions, skip=None, **_):
    """None for records whose ``skip`` column is true; else 1.0 for completions with "yes", else 0.0."""
    return [None if s else float("yes" in c.split()) for c, s in zip(completions, skip or [False] * len(completions))]
