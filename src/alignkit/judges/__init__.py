"""Judges: a prompt and two responses -> a verdict (or one response -> a score): reward models and ensembles,
verifiers, and LLM judges that follow a rubric or a constitution (``alignkit.judges.base`` has the interface).

``load_judge(spec)`` builds one from a config value or a CLI string:

- ``{"kind": "reward_model", "path": DIR, "how": "mean", "margin": 0}`` or ``"reward_model:DIR"``;
- ``{"kind": "verifier", "function": "math", "workers": 2}`` or ``"verifier:math"``;
- ``{"kind": "llm", "model": NAME, ...}`` or ``"llm:NAME"`` (``alignkit.judges.llm.LLMJudge``: a local model, or
  an OpenAI-compatible endpoint with ``base_url``).
"""

from __future__ import annotations

from alignkit.config.judge import JUDGE_KINDS as KINDS
from alignkit.config.judge import check_judge_spec
from alignkit.errors import ConfigError
from alignkit.judges.base import INCONSISTENT, Judge, Verdict, combine_orders, consistency, judge_pairs
from alignkit.judges.scored import RewardModelJudge, VerifierJudge

__all__ = [
    "INCONSISTENT",
    "KINDS",
    "Judge",
    "RewardModelJudge",
    "Verdict",
    "VerifierJudge",
    "check_judge_spec",
    "combine_orders",
    "consistency",
    "judge_pairs",
    "load_judge",
]


def load_judge(spec, field: str = "judge", device: str = "auto") -> Judge:
    """A judge from ``spec`` (see the module docstring); ``ConfigError`` naming ``field`` and the fix."""
    if isinstance(spec, Judge):
        return spec
    spec = check_judge_spec(spec, field)
    options = {k: v for k, v in spec.items() if k != "kind"}
    kind = spec["kind"]
    try:
        if kind == "reward_model":
            path = options.pop("path")
            from alignkit.reward_model import RewardModel

            return RewardModelJudge(RewardModel.load(path, device=device), name=f"reward_model:{path}", **options)
        if kind == "verifier":
            function = options.pop("function", "math")
            return VerifierJudge(function, **options)
        from alignkit.judges.llm import LLMJudge

        return LLMJudge(**{"device": device, **options})
    except TypeError as e:  # an unknown option
        raise ConfigError(f"{field}: {e}. Fix: check the options of a {kind} judge in docs/judges.md") from None
