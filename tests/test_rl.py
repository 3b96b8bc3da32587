"""RL pieces against hand-computed values: GAE, group / RLOO / whitened advantages, clipped losses and their
gradient signs, KL estimators against the exact KL of a small categorical, the KL controllers, the health monitor."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from alignkit.losses import clipped_policy_loss, clipped_value_loss
from alignkit.rl import (
    ADVANTAGES,
    AdaptiveKLController,
    FixedKLController,
    HealthMonitor,
    gae,
    group_advantages,
    kl_estimate,
    moments,
    rloo_advantages,
    whiten,
)


def test_gae_matches_a_hand_computed_example():
    # one row of 3 tokens then padding; gamma 0.9, lambda 0.8
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 1.0 + 0.9 * 0.0 - 0.6  # the value after the last token is 0
    d1 = 0.0 + 0.9 * 0.6 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2 = d2
    a1 = d1 + 0.9 * 0.8 * a2
    a0 = d0 + 0.9 * 0.8 * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.6, 0.0]]))


def test_gae_with_lambda_1_and_gamma_1_gives_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0], [0.5, 2.0, 0.0, 0.0]])
    values = torch.randn(2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = torch.tensor([[1.2, 1.1, 1.3, 1.0], [2.5, 2.0, 0.0, 0.0]])
    torch.testing.assert_close(ret, to_go)
    torch.testing.assert_close(adv, (to_go - values) * mask)


def test_padding_does_not_change_gae():
    rewards, values = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.3, 0.2]])
    short, _ = gae(rewards, values, torch.ones(1, 2))
    padded, _ = gae(
        torch.tensor([[0.0, 1.0, 5.0, 5.0]]), torch.tensor([[0.3, 0.2, 4.0, 4.0]]), torch.tensor([[1, 1, 0, 0]])
    )
    torch.testing.assert_close(padded[:, :2], short)


def test_group_advantages_scales():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    valid = torch.ones_like(r, dtype=torch.bool)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased
    torch.testing.assert_close(group_advantages(r, valid, "group")[0], (r[0] - 0.5) / (std + 1e-4))
    assert group_advantages(r, valid, "group")[1].abs().max() == 0  # zero-variance group: no signal
    torch.testing.assert_close(group_advantages(r, valid, "none")[0], r[0] - 0.5)
    batch = moments(r, valid)
    assert batch.mean == pytest.approx(0.75) and batch.var == pytest.approx(0.1875)
    torch.testing.assert_close(group_advantages(r, valid, "batch", batch=batch)[0], (r[0] - 0.5) / (0.1875**0.5 + 1e-4))


def test_group_advantages_leave_invalid_samples_out():
    r = torch.tensor([[1.0, 0.0, 123.0], [1.0, 5.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    a = group_advantages(r, valid, "none")
    torch.testing.assert_close(a, torch.tensor([[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]))  # 1 valid sample: no baseline


def test_rloo_leave_one_out_baseline():
    r = torch.tensor([[1.0, 0.0, 0.0, 3.0]])
    a = rloo_advantages(r, torch.ones_like(r, dtype=torch.bool))
    torch.testing.assert_close(a, torch.tensor([[1 - 1.0, 0 - 4 / 3, 0 - 4 / 3, 3 - 1 / 3]]))
    torch.testing.assert_close(a, 4 / 3 * (r - r.mean()))  # = G/(G-1) (r - mean)
    masked = rloo_advantages(r, torch.tensor([[True, True, False, False]]))
    torch.testing.assert_close(masked, torch.tensor([[1.0, -1.0, 0.0, 0.0]]))


def test_the_advantage_registry_names_each_estimator_once():
    """Each registered estimator is its documented formula, and the configs accept exactly the registered names."""
    from alignkit.config import GRPOMethodConfig

    r = torch.tensor([[1.0, 0.0, 0.0, 3.0], [2.0, 2.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, True]])
    torch.testing.assert_close(ADVANTAGES["grpo"](r, valid, "group"), group_advantages(r, valid, "group"))
    torch.testing.assert_close(ADVANTAGES["grpo"](r, valid, "none"), group_advantages(r, valid, "none"))
    batch = moments(r, valid)
    torch.testing.assert_close(ADVANTAGES["grpo"](r, valid, "batch"), group_advantages(r, valid, "batch", batch=batch))
    torch.testing.assert_close(ADVANTAGES["rloo"](r, valid, "group"), rloo_advantages(r, valid))
    centered = group_advantages(r, valid, "none")
    torch.testing.assert_close(ADVANTAGES["reinforce_pp"](r, valid), whiten(centered, valid))
    doubled = lambda t: t.mul_(2)  # noqa: E731 (two processes holding the same values: the same moments)
    torch.testing.assert_close(ADVANTAGES["reinforce_pp"](r, valid, all_reduce=doubled), whiten(centered, valid))
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(GRPOMethodConfig)}
    assert set(choices["advantage"]) - {None} == set(ADVANTAGES)


def test_whiten_and_global_moments():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    valid = torch.tensor([True, True, True, False])
    w = whiten(x, valid)
    torch.testing.assert_close(w[:3], (x[:3] - 2.0) / (torch.tensor(2 / 3).sqrt() + 1e-8))
    assert w[3] == 0

    def fake_all_reduce(t):  # two processes holding the same values
        t.mul_(2)

    assert moments(x, valid, fake_all_reduce) == moments(x, valid).__class__(6.0, 2.0, pytest.approx(2 / 3))
    no_shift = whiten(x, valid, shift_mean=False)
    torch.testing.assert_close(no_shift[:3], x[:3] / (torch.tensor(2 / 3).sqrt() + 1e-8))


def test_clipped_policy_loss_values_and_gradient_signs():
    old = torch.zeros(1, 4)
    logps = torch.tensor([[0.0, math.log(1.5), math.log(0.5), math.log(1.1)]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
    losses, low, high = clipped_policy_loss(logps, old, adv, clip_low=0.2, clip_high=0.28)
    # ratio 1 -> -A; ratio 1.5 > 1.28 with A > 0 -> clipped at 1.28; ratio 0.5 < 0.8 with A < 0 -> clipped at 0.8;
    # ratio 1.1 with A < 0: min(1.1 * -2, 1.1 * -2) (inside the range)
    torch.testing.assert_close(losses.detach(), torch.tensor([[-1.0, -1.28, 0.8, 2.2]]))
    assert low.tolist() == [[False, False, True, False]] and high.tolist() == [[False, True, False, False]]
    losses.sum().backward()
    g = logps.grad[0]
    assert g[0] < 0  # A > 0: descending the loss raises the token's log-prob
    assert g[1] == 0 and g[2] == 0  # clipped: no gradient
    assert g[3] > 0  # A < 0: lowers it


def test_clipped_policy_loss_broadcasts_sequence_advantages():
    logps, old = torch.randn(3, 5), torch.randn(3, 5)
    adv = torch.tensor([[0.5], [-1.0], [2.0]])
    a, _, _ = clipped_policy_loss(logps, old, adv)
    b, _, _ = clipped_policy_loss(logps, old, adv.expand(3, 5))
    torch.testing.assert_close(a, b)


def test_clipped_value_loss():
    old = torch.tensor([[1.0, 1.0, 1.0]])
    ret = torch.tensor([[2.0, 0.0, 1.0]])
    values = torch.tensor([[1.5, 1.5, 1.0]], requires_grad=True)
    loss = clipped_value_loss(values, old, ret, clip=0.2)
    # v=1.5 clipped to 1.2: max((1.5-2)^2, (1.2-2)^2)/2 = 0.32; v=1.5 vs 0: max(2.25, 1.44)/2 = 1.125
    torch.testing.assert_close(loss.detach(), torch.tensor([[0.32, 1.125, 0.0]]))
    loss.sum().backward()
    assert values.grad[0, 0] == 0  # the clipped branch is the max: no gradient through V
    assert values.grad[0, 1] > 0  # moves V toward the return 0
    torch.testing.assert_close(
        clipped_value_loss(values, old, ret, clip=None).detach(), 0.5 * (values - ret).detach() ** 2
    )


def test_kl_estimators_against_the_exact_kl_of_a_categorical():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    exact = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 400_000, replacement=True, generator=g)
    logp, logq = p.log()[y], q.log()[y]
    k1, k2, k3 = (kl_estimate(logp, logq, k) for k in ("k1", "k2", "k3"))
    assert float(k1.mean()) == pytest.approx(exact, rel=0.05)  # unbiased
    assert float(k3.mean()) == pytest.approx(exact, rel=0.05)  # unbiased
    assert float(k2.mean()) == pytest.approx(exact, rel=0.3)  # biased, close for nearby distributions
    assert (k2 >= 0).all() and (k3 >= 0).all() and (k1 < 0).any()  # only k1 goes negative per sample
    assert float(k3.std()) < float(k1.std())  # the point of k3: lower variance
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, logq, "k4")


def test_adaptive_kl_controller():
    c = AdaptiveKLController(value=0.2, target=6.0, horizon=10_000)
    c.update(current_kl=12.0, n_steps=1000)  # error clipped to +0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 0.1))
    c.update(current_kl=3.0, n_steps=1000)  # error -0.5 -> clipped to -0.2
    assert c.value == pytest.approx(0.2 * 1.02 * 0.98)
    before = c.value
    c.update(current_kl=6.0, n_steps=1000)  # on target: unchanged
    assert c.value == pytest.approx(before)
    restored = AdaptiveKLController(value=1.0, target=6.0, horizon=10_000)
    restored.load_state_dict(c.state_dict())
    assert restored.value == c.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05


def test_adaptive_kl_controller_holds_a_simulated_kl_near_target():
    """KL that responds to beta (KL = 2 / beta): the controller settles where KL = target."""
    c = AdaptiveKLController(value=0.05, target=4.0, horizon=100)
    for _ in range(400):
        c.update(current_kl=2.0 / c.value, n_steps=10)
    assert 2.0 / c.value == pytest.approx(4.0, rel=0.05)


def test_health_monitor_flags_each_problem():
    h = HealthMonitor(kl_target=4.0)
    ok = {"reward/mean": 0.1, "kl/sequence": 1.0, "loss/policy": 0.1, "loss/value": 1.0, "entropy": 2.0,
          "completion/length": 50.0, "completion/truncated": 0.0}  # fmt: skip
    for _ in range(4):
        assert h.check(ok)["health/alarms"] == 0
    bad = {"reward/mean": 50.0, "kl/sequence": 9.0, "loss/policy": -7.0, "loss/value": 30.0, "entropy": 0.1,
           "completion/length": 200.0, "completion/truncated": 0.9}  # fmt: skip
    flags = h.check(bad)
    assert flags["health/alarms"] == 6 and len(h.warnings) == 6
    for name in ("reward_spike", "kl_high", "policy_loss", "value_loss", "entropy_collapse", "length_explosion"):
        assert flags[f"health/{name}"] == 1.0, name
    assert "reward hacking" in " ".join(h.warnings)
    restored = HealthMonitor()
    restored.load_state_dict(h.state_dict())
    assert restored.state_dict() == h.state_dict()


def test_health_truncation_alarm_is_relative_to_the_start():
    """A policy whose answers already fill the window at step 1 is not exploding; one that starts filling it is."""
    long_from_start = HealthMonitor()
    for _ in range(3):
        assert long_from_start.check({"completion/length": 60.0, "completion/truncated": 0.75})["health/alarms"] == 0
    growing = HealthMonitor()
    assert growing.check({"completion/length": 40.0, "completion/truncated": 0.1})["health/alarms"] == 0
    assert growing.check({"completion/length": 45.0, "completion/truncated": 0.3})["health/alarms"] == 0  # < 0.5
    assert growing.check({"completion/length": 60.0, "completion/truncated": 0.7})["health/length_explosion"] == 1
