"""What the commands print says what it is: no `nan`, intervals say what they count, no meaningless rates, parameter
counts that do not round to zero."""

from __future__ import annotations

import math

from alignkit.data.formats import to_pairwise
from alignkit.eval.judged import describe
from alignkit.eval.winrate import win_rate
from alignkit.judges.base import Judge, Verdict
from alignkit.judges.quality import describe_agreement, judge_agreement
from alignkit.train.run import count


def test_all_ties_win_rate_prints_no_nan():
    lines = "\n".join(describe(win_rate([0.5] * 6, n_boot=200, seed=0), "a", "b"))
    assert "nan" not in lines.lower() and "no decisive comparisons" in lines
    lines = "\n".join(describe(win_rate([1.0, 0.0, 0.5, 1.0], n_boot=200, seed=0), "a", "b"))
    assert "Wilson interval over the 3 decisive prompts" in lines


def test_parameter_counts_never_round_to_zero():
    assert count(2304) == "2.30K" and count(576) == "576" and count(134_515_008) == "134.5M"


class _Pointwise(Judge):
    """Scores each response alone (like a reward model): prefers the longer one; ties on equal length."""

    name = "longer"
    order_invariant = True

    def compare(self, prompts, a, b, principles=None, columns=None):
        return [Verdict(1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5) for x, y in zip(a, b)]


class _PicksFirst(Judge):
    name = "first"

    def compare(self, prompts, a, b, principles=None, columns=None):
        return [Verdict(1.0) for _ in a]


def _pairs():
    rows = [("q1", "a long good answer", "no"), ("q2", "short", "a longer bad answer"), ("q3", "same", "four")]
    return [to_pairwise({"prompt": p, "chosen": c, "rejected": r}, f"x:{i}") for i, (p, c, r) in enumerate(rows)]


def test_order_invariant_judge_reports_no_position_rate():
    """'Picks the response shown first' is meaningless for a judge that never sees the two together."""
    result = judge_agreement(_Pointwise(), _pairs(), both_orders=True)
    assert "first_position_rate" not in result and result["order_invariant"]
    text = "\n".join(describe_agreement(result))
    assert "shown first" not in text and "position bias: none possible" in text and "nan" not in text
    biased = judge_agreement(_PicksFirst(), _pairs(), both_orders=True)
    assert biased["first_position_rate"] == 1.0


def test_all_tie_judge_prints_no_nan():
    class Ties(_Pointwise):
        def compare(self, prompts, a, b, principles=None, columns=None):
            return [Verdict(0.5) for _ in a]

    result = judge_agreement(Ties(), _pairs())
    assert math.isnan(result["agreement"])
    text = "\n".join(describe_agreement(result))
    assert "nan" not in text and "no decisive verdicts" in text
