"""What names a judge in a config or on the command line (``alignkit.judges.load_judge`` builds it): checked here,
before anything loads, so a bad ``method.judge`` fails with the config's other errors."""

from __future__ import annotations

from collections.abc import Mapping

from alignkit.errors import ConfigError

JUDGE_KINDS = ("reward_model", "verifier", "llm")
_TARGET = {"reward_model": "path", "verifier": "function", "llm": "model"}  # what ``KIND:TARGET`` names


def check_judge_spec(spec, field: str = "judge", where: str = "") -> dict:
    """``spec`` (``KIND:TARGET`` or a mapping with ``kind``) as a mapping with ``kind``; ``ConfigError`` naming
    ``field`` and the fix."""
    at = f"{where}: " if where else ""
    if isinstance(spec, str):
        kind, colon, target = spec.partition(":")
        if not colon or kind not in JUDGE_KINDS or not target:
            raise ConfigError(f"{at}{field}: {spec!r} is not a judge. Fix: use reward_model:DIR, verifier:math or "
                              "llm:MODEL (or a mapping with kind)")  # fmt: skip
        return {"kind": kind, _TARGET[kind]: target}
    if not isinstance(spec, Mapping) or spec.get("kind") not in JUDGE_KINDS:
        got = spec.get("kind") if isinstance(spec, Mapping) else spec
        raise ConfigError(f"{at}{field}.kind: {got!r}. Fix: use one of {', '.join(JUDGE_KINDS)}")
    if spec["kind"] == "reward_model" and not (isinstance(spec.get("path"), str) and spec["path"]):
        raise ConfigError(f"{at}{field}.path: {spec.get('path')!r}. Fix: name a reward model (or ensemble) directory")
    return dict(spec)
