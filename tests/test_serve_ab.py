"""A/B rollout: sticky, weighted assignment by user hash; runtime weight changes only add users to a growing
variant; bad weights get one clear error."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from alignkit.errors import UserError
from alignkit.serve.ab import Router, check_weights, unit_point, user_hash


def test_assignment_is_sticky_and_hash_only():
    r = Router(["base", "new"], {"base": 0.5, "new": 0.5})
    assert all(r.assign(f"user-{i}") == r.assign(f"user-{i}") for i in range(200))
    assert user_hash("alice") == user_hash("alice") != user_hash("bob")
    assert "alice" not in user_hash("alice") and len(user_hash("alice")) == 64
    assert 0 <= unit_point("alice") < 1


@pytest.mark.parametrize("share", [0.05, 0.25, 0.5])
def test_observed_split_is_within_binomial_tolerance(share):
    r = Router(["base", "new"], {"base": 1 - share, "new": share})
    n = 4000
    hits = sum(r.assign(f"u{i}") == "new" for i in range(n))
    # two-sided exact binomial test at 1%: a correct hash passes; a biased split (e.g. off by 3 points) fails
    assert binomtest(hits, n, share).pvalue > 0.01, (hits, n, share)


def test_rollout_steps_only_add_users_to_the_new_variant():
    r = Router(["base", "new"])
    users = [f"u{i}" for i in range(3000)]
    previous: set[str] = set()
    for share in (0.05, 0.10, 0.25, 0.50, 1.0):
        r.set_weights({"base": 1 - share, "new": share})
        on_new = {u for u in users if r.assign(u) == "new"}
        assert previous <= on_new  # nobody who had the new variant loses it as it grows
        previous = on_new
    assert len(previous) == len(users)


def test_zero_weight_variant_gets_no_traffic_and_weights_normalize():
    r = Router(["a", "b", "c"], {"a": 2, "b": 0, "c": 2})
    assert r.weights == {"a": 0.5, "b": 0.0, "c": 0.5}
    assert "b" not in {r.assign(f"u{i}") for i in range(500)}
    assert r.other("a") == "c" and Router(["solo"]).other("solo") is None
    assert Router(["a", "b"]).weights == {"a": 1.0, "b": 0.0}  # default: everything on the first variant


@pytest.mark.parametrize(
    "weights, fix",
    [
        ({"a": -1}, ">= 0"),
        ({"a": float("nan")}, "finite"),
        ({"a": 0, "b": 0}, "positive"),
        ({"zzz": 1}, "unknown variant 'zzz'"),
        ({}, "mapping"),
        ({"a": True}, "finite number"),
    ],
)
def test_bad_weights_get_one_clear_error(weights, fix):
    with pytest.raises(UserError, match=fix):
        check_weights(weights, ["a", "b"])


def test_a_failed_change_keeps_the_old_weights():
    r = Router(["a", "b"], {"a": 0.9, "b": 0.1})
    with pytest.raises(UserError):
        r.set_weights({"a": -1})
    assert r.weights == {"a": 0.9, "b": 0.1}
