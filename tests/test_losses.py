"""Closed-form values, shapes, rewards and gradient directions of every preference loss."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import (
    LOSSES,
    LossSpec,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    orpo_loss,
    robust_dpo_loss,
    sft_loss,
    simpo_loss,
)

# Hand-picked summed log-probs for a batch of 3: margins h = (pc - rc) - (pr - rr).
PC = [-10.0, -20.0, -5.0]
PR = [-12.0, -15.0, -5.0]
RC = [-11.0, -18.0, -6.0]
RR = [-11.5, -16.0, -4.0]


def _h(i):
    return (PC[i] - RC[i]) - (PR[i] - RR[i])


def _log_sigmoid(x):
    # independent of torch: log(1 / (1 + e^-x)), computed stably in both directions
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def _ref_inputs(grad=True):
    return _t(PC, grad), _t(PR, grad), _t(RC), _t(RR)


# --------------------------------------------------------------------------------------------- DPO


def test_margins_of_the_fixture_are_distinct():
    # positive, negative and zero-ish margins so each closed form is checked on both sides
    assert [_h(i) for i in range(3)] == [1.5, -3.0, 2.0]


def test_dpo_closed_form_and_rewards():
    beta = 0.1
    losses, cr, rr = dpo_loss(*_ref_inputs(), beta=beta)
    assert losses.shape == (3,) and cr.shape == (3,) and rr.shape == (3,)
    for i in range(3):
        expected = -math.log(1.0 / (1.0 + math.exp(-beta * _h(i))))
        assert losses[i].item() == pytest.approx(expected, rel=1e-9)
        assert cr[i].item() == pytest.approx(beta * (PC[i] - RC[i]))
        assert rr[i].item() == pytest.approx(beta * (PR[i] - RR[i]))
    assert not cr.requires_grad and not rr.requires_grad


def test_dpo_loss_at_zero_margin_is_log2():
    z = torch.zeros(2, dtype=torch.float64)
    losses, _, _ = dpo_loss(z, z, z, z, beta=0.5)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)


def test_dpo_gradient_direction():
    pc, pr, rc, rr = _ref_inputs()
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    # d/d pc of -log sigma(beta h) = -beta * (1 - sigma(beta h))
    for i in range(3):
        s = 1.0 / (1.0 + math.exp(-0.1 * _h(i)))
        assert pc.grad[i].item() == pytest.approx(-0.1 * (1 - s))
        assert pr.grad[i].item() == pytest.approx(0.1 * (1 - s))


def test_dpo_label_smoothing_zero_equals_plain():
    plain, _, _ = dpo_loss(*_ref_inputs(False), beta=0.3)
    smoothed, _, _ = dpo_loss(*_ref_inputs(False), beta=0.3, label_smoothing=0.0)
    assert torch.equal(plain, smoothed)


def test_cdpo_formula():
    beta, eps = 0.2, 0.1
    losses, _, _ = dpo_loss(*_ref_inputs(False), beta=beta, label_smoothing=eps)
    for i in range(3):
        x = beta * _h(i)
        expected = -(1 - eps) * _log_sigmoid(x) - eps * _log_sigmoid(-x)
        assert losses[i].item() == pytest.approx(expected, rel=1e-9)
    # cDPO differs from DPO on these inputs
    plain, _, _ = dpo_loss(*_ref_inputs(False), beta=beta)
    assert not torch.allclose(plain, losses)


@pytest.mark.parametrize("eps", [-0.01, 0.5, 0.7])
def test_dpo_rejects_bad_label_smoothing(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*_ref_inputs(False), label_smoothing=eps)


# --------------------------------------------------------------------------------------------- robust


def test_robust_closed_form():
    beta, eps = 0.1, 0.2
    losses, cr, rr = robust_dpo_loss(*_ref_inputs(False), beta=beta, label_smoothing=eps)
    assert losses.shape == (3,)
    for i in range(3):
        x = beta * _h(i)
        l_pos, l_neg = -_log_sigmoid(x), -_log_sigmoid(-x)
        expected = ((1 - eps) * l_pos - eps * l_neg) / (1 - 2 * eps)
        assert losses[i].item() == pytest.approx(expected, rel=1e-9)
        assert cr[i].item() == pytest.approx(beta * (PC[i] - RC[i]))
        assert rr[i].item() == pytest.approx(beta * (PR[i] - RR[i]))
    assert not cr.requires_grad and not rr.requires_grad


def test_robust_with_zero_noise_equals_dpo():
    robust, _, _ = robust_dpo_loss(*_ref_inputs(False), beta=0.1, label_smoothing=0.0)
    plain, _, _ = dpo_loss(*_ref_inputs(False), beta=0.1)
    assert torch.allclose(robust, plain, atol=1e-12)


def test_robust_gradient_direction():
    pc, pr, rc, rr = _ref_inputs()
    losses, _, _ = robust_dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    losses.sum().backward()
    # d L / d(beta h) = [-(1-eps)(1-s) - eps s] / (1-2eps) < 0 for any h
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.6, 1.0])
def test_robust_rejects_noise_outside_range(eps):
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        robust_dpo_loss(*_ref_inputs(False), label_smoothing=eps)


@pytest.mark.parametrize("eps", [0.0, 0.25, 0.49])
def test_robust_accepts_noise_in_range(eps):
    losses, _, _ = robust_dpo_loss(*_ref_inputs(False), label_smoothing=eps)
    assert torch.isfinite(losses).all()


# --------------------------------------------------------------------------------------------- IPO


def test_ipo_closed_form():
    beta = 0.25
    losses, cr, rr = ipo_loss(*_ref_inputs(False), beta=beta)
    assert losses.shape == (3,)
    for i in range(3):
        assert losses[i].item() == pytest.approx((_h(i) - 1 / (2 * beta)) ** 2)
        assert cr[i].item() == pytest.approx(beta * (PC[i] - RC[i]))
        assert rr[i].item() == pytest.approx(beta * (PR[i] - RR[i]))
    assert not cr.requires_grad and not rr.requires_grad


def test_ipo_minimum_at_half_inverse_beta():
    beta = 0.1  # target margin 5
    target = 1 / (2 * beta)
    pc = torch.tensor([target], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    z = torch.zeros(1, dtype=torch.float64)
    loss, _, _ = ipo_loss(pc, pr, z, z, beta=beta)
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-12)
    # on both sides of the target, the loss is larger and the gradient points back toward it
    for h, sign in [(target - 1.0, -1), (target + 1.0, 1)]:
        pc = torch.tensor([h], dtype=torch.float64, requires_grad=True)
        loss, _, _ = ipo_loss(pc, z, z, z, beta=beta)
        loss.sum().backward()
        assert loss.item() == pytest.approx(1.0)
        assert math.copysign(1, pc.grad.item()) == sign
        assert pc.grad.item() == pytest.approx(2.0 * sign)


def test_ipo_gradient_direction_below_target():
    # all margins of the fixture are below 1 / (2 * 0.1) = 5: pushing chosen up lowers the loss
    pc, pr, rc, rr = _ref_inputs()
    losses, _, _ = ipo_loss(pc, pr, rc, rr, beta=0.1)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


# --------------------------------------------------------------------------------------------- hinge


def test_hinge_closed_form():
    beta = 0.5
    losses, cr, rr = hinge_loss(*_ref_inputs(False), beta=beta)
    assert losses.shape == (3,)
    for i in range(3):
        assert losses[i].item() == pytest.approx(max(0.0, 1 - beta * _h(i)))
    # h = 2 -> beta h = 1: exactly at the margin; h = -3 -> 2.5
    assert losses.tolist() == pytest.approx([0.25, 2.5, 0.0])
    assert cr.tolist() == pytest.approx([beta * (PC[i] - RC[i]) for i in range(3)])
    assert rr.tolist() == pytest.approx([beta * (PR[i] - RR[i]) for i in range(3)])
    assert not cr.requires_grad and not rr.requires_grad


def test_hinge_gradient_inside_and_beyond_margin():
    beta = 0.1
    pc = torch.tensor([0.0, 20.0], dtype=torch.float64, requires_grad=True)  # h = 0 (inside), 20 (beta h = 2 > 1)
    pr = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    z = torch.zeros(2, dtype=torch.float64)
    losses, _, _ = hinge_loss(pc, pr, z, z, beta=beta)
    losses.sum().backward()
    assert losses.tolist() == pytest.approx([1.0, 0.0])
    assert pc.grad.tolist() == pytest.approx([-beta, 0.0])
    assert pr.grad.tolist() == pytest.approx([beta, 0.0])


# --------------------------------------------------------------------------------------------- SimPO


def test_simpo_closed_form_and_rewards():
    beta, gamma = 2.0, 0.5
    c, r = [-0.5, -1.2, -0.8], [-0.9, -0.7, -0.8]
    losses, cr, rr = simpo_loss(_t(c), _t(r), beta=beta, gamma=gamma)
    assert losses.shape == (3,)
    for i in range(3):
        x = beta * c[i] - beta * r[i] - gamma
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-x)), rel=1e-9)
        assert cr[i].item() == pytest.approx(beta * c[i])
        assert rr[i].item() == pytest.approx(beta * r[i])
    assert not cr.requires_grad and not rr.requires_grad


def test_simpo_default_margin_is_one():
    z = torch.zeros(1, dtype=torch.float64)
    losses, _, _ = simpo_loss(z, z)
    assert losses.item() == pytest.approx(math.log(1 + math.e))


def test_simpo_gradient_direction():
    c = _t([-0.5, -1.2, -0.8], grad=True)
    r = _t([-0.9, -0.7, -0.8], grad=True)
    losses, _, _ = simpo_loss(c, r)
    losses.sum().backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


# --------------------------------------------------------------------------------------------- ORPO


def _log_odds(avg_logp):
    p = math.exp(avg_logp)
    return math.log(p / (1 - p))


def test_orpo_closed_form_and_rewards():
    beta = 0.1
    c, r = [-0.5, -1.2, -2.0], [-0.9, -0.7, -2.0]
    losses, cr, rr = orpo_loss(_t(c), _t(r), beta=beta)
    assert losses.shape == (3,)
    for i in range(3):
        lo = _log_odds(c[i]) - _log_odds(r[i])
        expected = beta * math.log(1 + math.exp(-lo))
        assert losses[i].item() == pytest.approx(expected, rel=1e-9)
        assert cr[i].item() == pytest.approx(beta * c[i])
        assert rr[i].item() == pytest.approx(beta * r[i])
    assert losses[2].item() == pytest.approx(beta * math.log(2))
    assert not cr.requires_grad and not rr.requires_grad


def test_orpo_gradient_direction():
    c = _t([-0.5, -1.2, -2.0], grad=True)
    r = _t([-0.9, -0.7, -2.0], grad=True)
    losses, _, _ = orpo_loss(c, r)
    losses.sum().backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chosen,rejected", [(0.0, -1.0), (-1e-9, -1.0), (-1.0, 0.0), (0.0, 0.0), (-1e-7, -1e-8)])
def test_orpo_finite_near_zero_logp(chosen, rejected, dtype):
    c = torch.tensor([chosen], dtype=dtype, requires_grad=True)
    r = torch.tensor([rejected], dtype=dtype, requires_grad=True)
    losses, cr, rr = orpo_loss(c, r, beta=0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    # rewards are not clamped
    assert cr.item() == pytest.approx(0.1 * chosen) and rr.item() == pytest.approx(0.1 * rejected)


def test_orpo_near_zero_prefers_the_likelier_completion():
    # P(chosen) ~ 1 while P(rejected) = e^-1: the odds ratio is huge, the loss tiny but positive
    losses, _, _ = orpo_loss(torch.tensor([0.0]), torch.tensor([-1.0]), beta=0.1)
    assert 0.0 <= losses.item() < 1e-4
    # the opposite: loss ~ beta * |log odds ratio|, large
    losses, _, _ = orpo_loss(torch.tensor([-1.0]), torch.tensor([0.0]), beta=0.1)
    assert losses.item() > 1.0


# --------------------------------------------------------------------------------------------- SFT


def test_sft_loss_is_negative_logp():
    logps = _t([-0.5, -2.0], grad=True)
    losses = sft_loss(logps)
    assert losses.tolist() == [0.5, 2.0]
    losses.sum().backward()
    assert logps.grad.tolist() == [-1.0, -1.0]


# --------------------------------------------------------------------------------------------- registry


def test_registry_contents():
    assert set(LOSSES) == {"dpo", "robust", "ipo", "hinge", "simpo", "orpo"}
    assert all(isinstance(spec, LossSpec) for spec in LOSSES.values())
    assert LOSSES["dpo"].fn is dpo_loss and LOSSES["robust"].fn is robust_dpo_loss
    assert LOSSES["ipo"].fn is ipo_loss and LOSSES["hinge"].fn is hinge_loss
    assert LOSSES["simpo"].fn is simpo_loss and LOSSES["orpo"].fn is orpo_loss


def test_registry_reference_and_averaging():
    assert {n for n, s in LOSSES.items() if not s.needs_reference} == {"simpo", "orpo"}
    assert {n for n, s in LOSSES.items() if s.average_logps} == {"ipo", "simpo", "orpo"}


def test_registry_sft_weights():
    assert LOSSES["orpo"].default_sft_weight == 1.0
    assert all(s.default_sft_weight == 0.0 for n, s in LOSSES.items() if n != "orpo")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_params_are_accepted(name):
    spec = LOSSES[name]
    values = {"beta": 0.2, "label_smoothing": 0.1, "gamma": 0.5}
    kwargs = {p: values[p] for p in spec.params}
    logps = [_t([-1.0, -2.0]), _t([-1.5, -1.0])]
    if spec.needs_reference:
        logps += [_t([-1.2, -1.8]), _t([-1.4, -1.1])]
    losses, cr, rr = spec.fn(*logps, **kwargs)
    assert losses.shape == cr.shape == rr.shape == (2,)
    assert torch.isfinite(losses).all()


# ------------------------------------------------------------------ reward-model and KTO losses (issue 4)


def test_bradley_terry_closed_form_margin_and_centering():
    from alignkit.losses import bradley_terry_loss

    rc, rr = torch.tensor([1.5, -0.5]), torch.tensor([0.5, 0.5])
    expected = [-math.log(1 / (1 + math.exp(-(1.5 - 0.5)))), -math.log(1 / (1 + math.exp(-(-0.5 - 0.5))))]
    torch.testing.assert_close(bradley_terry_loss(rc, rr), torch.tensor(expected))
    with_margin = bradley_terry_loss(rc, rr, margin=torch.tensor([1.0, 0.0]))
    assert with_margin[0].item() == pytest.approx(math.log(2), abs=1e-6)  # gap 1 minus margin 1 -> log 2
    centered = bradley_terry_loss(rc, rr, center_weight=0.5)
    torch.testing.assert_close(centered - bradley_terry_loss(rc, rr), 0.5 * (rc + rr) ** 2)


def test_bradley_terry_gradient_pushes_rewards_apart():
    from alignkit.losses import bradley_terry_loss

    rc, rr = torch.tensor([0.2], requires_grad=True), torch.tensor([0.4], requires_grad=True)
    bradley_terry_loss(rc, rr).sum().backward()
    assert rc.grad.item() < 0 < rr.grad.item()
    assert rc.grad.item() == pytest.approx(-rr.grad.item())


def test_kto_reference_point_is_clamped_and_detached():
    from alignkit.losses import kto_reference_point

    policy = torch.tensor([-10.0, -12.0], requires_grad=True)
    z = kto_reference_point(policy, torch.tensor([-11.0, -11.0]))  # mean log-ratio 0 -> 0
    assert z.item() == pytest.approx(0.0) and not z.requires_grad
    assert kto_reference_point(torch.tensor([-9.0, -9.0]), torch.tensor([-10.0, -12.0])).item() == pytest.approx(2.0)
    assert kto_reference_point(torch.tensor([-15.0]), torch.tensor([-10.0])).item() == 0.0  # negative KL estimate


def test_kto_closed_form_weights_and_gradient_direction():
    from alignkit.losses import kto_loss

    beta, z = 0.5, 0.3
    policy = torch.tensor([-4.0, -4.0], requires_grad=True)
    ref = torch.tensor([-5.0, -5.0])  # r = 1 for both
    labels = torch.tensor([True, False])
    losses, rewards = kto_loss(policy, ref, labels, z, beta=beta, desirable_weight=2.0, undesirable_weight=0.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses[0].item() == pytest.approx(2.0 * (1 - sig(beta * (1 - z))))
    assert losses[1].item() == pytest.approx(0.5 * (1 - sig(beta * (z - 1))))
    torch.testing.assert_close(rewards, torch.tensor([beta, beta]))
    assert not rewards.requires_grad
    losses.sum().backward()
    assert policy.grad[0].item() < 0  # desirable: raise its likelihood
    assert policy.grad[1].item() > 0  # undesirable: lower it
