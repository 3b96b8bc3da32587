"""Pointwise judges: a reward model (or ensemble) and a verifier. They score each response on its own, so the order
in which two responses are shown cannot matter (``order_invariant``); a principle is ignored (they have none).

- ``RewardModelJudge``: the reward (aggregated over an ensemble by ``how``); A vs B is decided by the difference
  (ties within ``margin``) and ``p_a = sigmoid(r_A - r_B)``, the Bradley-Terry probability the model was trained on.
- ``VerifierJudge``: any reward function of ``alignkit.rewards`` (``math``, ``code``, ``module:function``) run in
  worker processes, with the records' fields (``answer``, ``tests``) as ``columns``; None (no gold) is unjudged.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

from alignkit.data.formats import Content
from alignkit.errors import UserError
from alignkit.judges.base import Judge, Verdict

log = logging.getLogger(__name__)


def _versus(score_a: list, score_b: list, margin: float, bradley_terry: bool) -> list[Verdict]:
    out = []
    for sa, sb in zip(score_a, score_b):
        if sa is None or sb is None:
            out.append(Verdict(None, None, {"score_a": sa, "score_b": sb}))
            continue
        outcome = 1.0 if sa - sb > margin else 0.0 if sb - sa > margin else 0.5
        p = 1 / (1 + math.exp(-(sa - sb))) if bradley_terry else outcome
        out.append(Verdict(outcome, p, {"score_a": sa, "score_b": sb}))
    return out


class RewardModelJudge(Judge):
    order_invariant = True

    def __init__(self, reward_model, how: str = "mean", margin: float = 0.0, batch_size: int = 8, name: str = ""):
        """``reward_model``: an ``alignkit.reward_model.RewardModel`` or the path of one (or of an ensemble)."""
        if margin < 0:
            raise UserError(f"judge margin is {margin}. Fix: use a margin >= 0 (rewards closer than it are ties)")
        if isinstance(reward_model, str):
            from alignkit.reward_model import RewardModel

            name = name or f"reward_model:{reward_model}"
            reward_model = RewardModel.load(reward_model)
        self.rm, self.how, self.margin, self.batch_size = reward_model, how, margin, batch_size
        self.name = name or "reward_model"

    def score(self, prompts: Sequence[Content], responses: Sequence[str], principles=None, columns=None) -> list:
        if not prompts:
            return []
        return self.rm.reward(list(prompts), list(responses), how=self.how, batch_size=self.batch_size)[0].tolist()

    def compare(self, prompts, a, b, principles=None, columns=None) -> list[Verdict]:
        n = len(prompts)
        scores = self.score(list(prompts) * 2, list(a) + list(b))
        return _versus(scores[:n], scores[n:], self.margin, bradley_terry=True)


class VerifierJudge(Judge):
    order_invariant = True

    def __init__(self, function="math", workers: int = 2, margin: float = 0.0, name: str = ""):
        """``function``: a reward-function spec or ``RewardSpec``; ``workers=0`` runs it in this process."""
        from alignkit.rewards import RewardRunner

        self.runner = RewardRunner([function], workers=workers)
        self.margin = margin
        self.name = name or f"verifier:{function if isinstance(function, str) else self.runner.specs[0].name}"

    def score(self, prompts, responses, principles=None, columns: dict[str, list] | None = None) -> list:
        """``columns``: the records' fields aligned with ``prompts`` (``answer=[...]``)."""
        if not prompts:
            return []
        result = self.runner(list(prompts), list(responses), columns or {})
        for line in result.problems():  # timeouts, errors: those samples are unjudged (None)
            log.warning(line)
        return list(result.rewards)

    def compare(self, prompts, a, b, principles=None, columns: dict[str, list] | None = None) -> list[Verdict]:
        n = len(prompts)
        doubled = {k: list(v) * 2 for k, v in (columns or {}).items()}
        scores = self.score(list(prompts) * 2, list(a) + list(b), columns=doubled)
        return _versus(scores[:n], scores[n:], self.margin, bradley_terry=False)

    def close(self) -> None:
        self.runner.close()
