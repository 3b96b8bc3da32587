"""Win-rate statistics: Wilson and bootstrap intervals, the length-controlled rate, MT-Bench's swap rule and
Bradley-Terry ratings, against known values and constructed data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.eval.winrate import bradley_terry, length_controlled_win_rate, swap_rule, win_rate
from alignkit.stats import bootstrap_interval


def test_counts_and_the_wilson_interval_on_decisive_comparisons():
    # 8 wins, 2 losses, 5 ties: Wilson 95% for 8/10 is [0.4902, 0.9433] (Wilson 1927; Newcombe 1998, table I)
    r = win_rate([1.0] * 8 + [0.0] * 2 + [0.5] * 5)
    assert (r.wins, r.ties, r.losses, r.n) == (8, 5, 2, 15)
    assert r.decisive_rate == pytest.approx(0.8)
    assert r.wilson == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert r.rate == pytest.approx((8 + 2.5) / 15)


def test_bootstrap_interval_matches_the_normal_approximation_and_degenerates_on_constants():
    x = np.array([1.0] * 60 + [0.0] * 40)
    low, high = bootstrap_interval(x, n_boot=4000, seed=1)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 100)  # 0.096
    assert low == pytest.approx(0.6 - half, abs=0.02) and high == pytest.approx(0.6 + half, abs=0.02)
    assert bootstrap_interval([0.5] * 20) == (0.5, 0.5)
    assert bootstrap_interval([0.3, 0.7], seed=3) == bootstrap_interval([0.3, 0.7], seed=3)  # seeded


def test_length_control_removes_a_preference_that_length_alone_explains():
    """A is usually longer and the judge prefers longer answers, with no other advantage: the raw win rate is
    high, the length-controlled one is close to 1/2."""
    rng = np.random.default_rng(0)
    diff = rng.normal(1.0, 1.0, size=4000)  # len A - len B, in units of its spread
    outcomes = (rng.random(4000) < 1 / (1 + np.exp(-2.0 * diff))).astype(float)
    r = win_rate(outcomes, length_diff=diff * 50)  # scaled to tokens: the rate does not depend on units
    assert r.rate > 0.75
    assert r.length_controlled == pytest.approx(0.5, abs=0.04)
    # and a real advantage at equal length survives the adjustment
    better = (rng.random(4000) < 1 / (1 + np.exp(-(1.0 + 2.0 * diff)))).astype(float)
    assert length_controlled_win_rate(better, diff) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.04)


def test_length_control_is_none_when_it_cannot_be_fitted():
    assert length_controlled_win_rate([1.0, 0.0, 1.0], [5, 5, 5]) is None  # lengths never differ
    assert length_controlled_win_rate([1.0, 1.0, 1.0], [1, 2, 3]) is None  # outcomes never vary
    assert length_controlled_win_rate([0.0, 0.0, 1.0, 1.0], [-2, -1, 1, 2]) is None  # length separates perfectly
    assert win_rate([1.0, 0.0]).length_controlled is None  # no lengths given


def test_per_category_breakdown():
    r = win_rate([1, 1, 0, 0.5, 0], categories=["math", "math", "chat", "chat", "chat"])
    assert set(r.per_category) == {"chat", "math"}
    assert r.per_category["math"].wins == 2 and r.per_category["math"].decisive_rate == 1.0
    assert r.per_category["chat"].ties == 1 and r.per_category["chat"].losses == 2


def test_bad_outcomes_and_shapes_are_refused():
    with pytest.raises(ValueError, match="position 1"):
        win_rate([1.0, 2.0])
    with pytest.raises(ValueError, match="categories"):
        win_rate([1.0, 0.0], categories=["a"])
    with pytest.raises(ValueError, match="length differences"):
        length_controlled_win_rate([1.0, 0.0], [1.0])
    nothing_decisive = win_rate([0.5, 0.5])
    assert math.isnan(nothing_decisive.decisive_rate) and nothing_decisive.rate == 0.5


def test_swap_rule_turns_position_dependent_verdicts_into_ties():
    assert swap_rule(1.0, 1.0) == 1.0 and swap_rule(0.0, 0.0) == 0.0
    assert swap_rule(1.0, 0.0) == 0.5  # the judge preferred whichever answer came first
    assert swap_rule(0.5, 1.0) == 0.5


def test_bradley_terry_recovers_known_strengths():
    rng = np.random.default_rng(0)
    strength = {"base": 0.0, "sft": 0.5, "dpo": 1.2}  # log-strengths
    names, rows = list(strength), []
    for _ in range(3000):
        a, b = rng.choice(3, size=2, replace=False)
        p = 1 / (1 + math.exp(strength[names[b]] - strength[names[a]]))
        rows.append((names[a], names[b], float(rng.random() < p)))
    ratings = bradley_terry(rows, n_boot=50)
    elo = 400 / math.log(10)
    assert ratings["dpo"][0] > ratings["sft"][0] > ratings["base"][0]
    assert ratings["dpo"][0] - ratings["base"][0] == pytest.approx(1.2 * elo, rel=0.1)
    assert sum(r for r, _, _ in ratings.values()) / 3 == pytest.approx(1000.0)
    for rating, low, high in ratings.values():
        assert low <= rating <= high


def test_bradley_terry_of_two_models_is_the_logit_of_the_win_rate():
    rows = [("a", "b", 1.0)] * 30 + [("a", "b", 0.0)] * 10 + [("b", "a", 0.5)] * 4
    ratings = bradley_terry(rows, n_boot=20)
    p = (30 + 2) / 44  # a's score with ties as half
    assert ratings["a"][0] - ratings["b"][0] == pytest.approx(400 / math.log(10) * math.log(p / (1 - p)), rel=1e-4)


def test_bradley_terry_refuses_what_has_no_ratings():
    with pytest.raises(ValueError, match="always wins"):
        bradley_terry([("a", "b", 1.0)] * 5)
    with pytest.raises(ValueError, match="two models"):
        bradley_terry([("a", "a", 1.0)])
    with pytest.raises(ValueError, match="no comparisons"):
        bradley_terry([])
