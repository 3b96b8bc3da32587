"""The policy objectives of the RL methods (losses.POLICY_LOSSES), against their closed forms: PPO/GRPO's clipped
token ratio, GSPO's sequence ratio (Zheng et al. 2025) and CISPO's clipped stop-gradient weight (MiniMax 2025);
their selection by name and the configs that refuse combinations the papers do not define."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.errors import ConfigError
from alignkit.losses import POLICY_LOSSES, cispo_policy_loss, clipped_policy_loss, gspo_policy_loss


def grads(fn, logps, old, adv, mask, *clip):
    logps = logps.clone().requires_grad_(True)
    losses, low, high = fn(logps, old, adv, mask, *clip)
    per_seq = (losses * mask).sum(-1) / mask.sum(-1)  # sequence_mean aggregation
    per_seq.sum().backward()
    return losses.detach(), logps.grad, low, high


def test_gspo_is_the_sequence_ratio_and_its_gradient():
    old = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    logps = old + torch.tensor([[0.1, -0.05, 0.04, 9.0], [0.0, 0.0, 0.0, 0.0]])  # the 9 is padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = torch.tensor([[1.5], [-0.5]])
    s0 = math.exp((0.1 - 0.05 + 0.04) / 3)  # the geometric mean of the token ratios over the completion
    losses, g, low, high = grads(gspo_policy_loss, logps, old, adv, mask, 0.2, 0.2)
    assert losses[0, :3].tolist() == pytest.approx([-s0 * 1.5] * 3)
    assert losses[1].tolist() == pytest.approx([0.5] * 4)
    # d/dlogp_t of mean_t(-s A) = -s A / |y|: every token of a sequence gets the same weight
    assert g[0, :3].tolist() == pytest.approx([-s0 * 1.5 / 3] * 3) and g[0, 3] == 0
    assert g[1].tolist() == pytest.approx([0.5 / 4] * 4)
    assert not low.any() and not high.any()


def test_gspo_clips_whole_sequences_and_equals_ppo_on_one_token():
    old = torch.zeros(2, 3)
    logps = torch.tensor([[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]])  # ratios e^0.5 and e^-0.5, outside 1 +- 0.2
    mask = torch.ones(2, 3)
    adv = torch.tensor([[1.0], [-1.0]])
    _, g, low, high = grads(gspo_policy_loss, logps, old, adv, mask, 0.2, 0.2)
    assert torch.all(g == 0) and high[0].all() and low[1].all()  # the clip removed both sequences' gradient
    one = torch.tensor([[0.3], [-0.1]]), torch.zeros(2, 1), torch.tensor([[1.0], [-2.0]]), torch.ones(2, 1)
    gspo = gspo_policy_loss(*one, 0.2, 0.28)[0]
    ppo = clipped_policy_loss(one[0], one[1], one[2], 0.2, 0.28)[0]
    assert torch.allclose(gspo, ppo)


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    old = torch.zeros(1, 3)
    logps = torch.tensor([[0.0, 1.0, -2.0]])  # ratios 1, e (above 1 + 0.28), e^-2
    adv = torch.tensor([[2.0]])
    mask = torch.ones(1, 3)
    losses, g, low, high = grads(cispo_policy_loss, logps, old, adv, mask, 1.0, 0.28)
    weight = torch.tensor([1.0, 1.28, math.exp(-2.0)])  # clipped from above only (eps_low 1: no lower bound)
    assert losses[0].tolist() == pytest.approx((-weight * 2.0 * logps[0]).tolist())
    assert g[0].tolist() == pytest.approx((-weight * 2.0 / 3).tolist())  # every token keeps a gradient
    assert high.tolist() == [[False, True, False]] and not low.any()
    ppo_grad = grads(POLICY_LOSSES["ppo"], logps, old, adv, mask, 0.2, 0.28)[1]
    assert ppo_grad[0, 1] == 0  # where PPO's clip drops the token


def test_the_objectives_are_chosen_by_name():
    from alignkit.config.online import PolicyGradientConfig

    choices = PolicyGradientConfig.__dataclass_fields__["policy_loss"].metadata["choices"]
    assert set(choices) == set(POLICY_LOSSES) == {"ppo", "gspo", "cispo"}


def test_configs_refuse_what_the_papers_do_not_define(tmp_path):
    from alignkit.train import make_config

    base = {"model": {"name": "x"}, "data": {"train": "builtin:arithmetic_train.jsonl"},
            "train": {"output_dir": str(tmp_path)}}  # fmt: skip
    with pytest.raises(ConfigError, match="sequence_mean"):
        make_config("grpo", **base, method={"rewards": ["math"], "policy_loss": "gspo"})
    ok = make_config("grpo", **base, method={"rewards": ["math"], "policy_loss": "gspo",
                                             "loss_aggregation": "sequence_mean", "clip_low": 3e-4,
                                             "clip_high": 4e-4})  # fmt: skip
    assert ok.method.policy_loss == "gspo"
    with pytest.raises(ConfigError, match="per token"):
        make_config("ppo", **base, method={"rewards": ["math"], "policy_loss": "gspo"})
    ppo = make_config("ppo", **base, method={"rewards": ["math"], "policy_loss": "cispo"})
    assert ppo.method.policy_loss == "cispo"


def test_rollout_correction_weights_truncate_and_mask_per_token_and_sequence():
    from alignkit.losses import rollout_correction_weights

    trainer = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    gap = torch.tensor([[0.0, math.log(3.0), math.log(0.25)], [math.log(1.5), math.log(1.2), 5.0]])  # 5.0: padding
    sampler = trainer - gap  # rho = pi_trainer / pi_sampler = exp(gap)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    tis = rollout_correction_weights(trainer, sampler, mask, "truncate", "token", 2.0)
    torch.testing.assert_close(tis, torch.tensor([[1.0, 2.0, 0.25], [1.5, 1.2, 0.0]]))
    mis = rollout_correction_weights(trainer, sampler, mask, "mask", "token", 2.0)
    torch.testing.assert_close(mis, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    # sequence level: one rho per sequence, the product of its tokens' ratios (row 0: 3 x 0.25 = 0.75; row 1: 1.8)
    seq_tis = rollout_correction_weights(trainer, sampler, mask, "truncate", "sequence", 2.0)
    torch.testing.assert_close(seq_tis, torch.tensor([[0.75, 0.75, 0.75], [1.8, 1.8, 0.0]]))
    seq_mis = rollout_correction_weights(trainer, sampler, mask, "mask", "sequence", 1.5)
    torch.testing.assert_close(seq_mis, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    trainer.requires_grad_(True)
    assert not rollout_correction_weights(trainer, sampler, mask).requires_grad  # weights, never a gradient path
    with pytest.raises(ValueError):
        rollout_correction_weights(trainer, sampler, mask, "clip", "token", 2.0)


def test_dapo_is_one_line_and_settings_given_win():
    from alignkit.train import make_config

    cfg = make_config("grpo", overrides=["method.preset=dapo", "method.rewards=[math]", "data.train=x.jsonl",
                                         "method.clip_high=0.3"])  # fmt: skip
    m = cfg.method
    assert (m.clip_low, m.clip_high, m.loss_aggregation, m.dynamic_sampling, m.overlong, m.beta) == (
        0.2, 0.3, "token_mean", True, "penalty", 0.0)  # fmt: skip
    with pytest.raises(ConfigError, match="not a preset. Fix: use one of: dapo"):
        make_config("grpo", overrides=["method.preset=dapo2", "method.rewards=[math]", "data.train=x.jsonl"])
    with pytest.raises(ConfigError, match="none for this method"):
        make_config("ppo", overrides=["method.preset=dapo", "method.rewards=[math]", "data.train=x.jsonl"])
    with pytest.raises(ConfigError, match="rollout_correction_threshold"):
        make_config("grpo", overrides=["method.rollout_correction_threshold=1", "method.rewards=[math]",
                                       "data.train=x.jsonl"])  # fmt: skip


def test_generalized_jsd_against_its_closed_form():
    """GKD's divergence on two small distributions by hand: the end points are the forward and reverse KL, in
    between beta KL(T || M) + (1 - beta) KL(S || M) with M = (1 - beta) S + beta T; 0 for equal distributions;
    the gradient reaches the student only."""
    from alignkit.losses import generalized_jsd_loss

    s = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    t = torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.25, 0.25]])
    kl = lambda p, q: (p * (p / q).log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(generalized_jsd_loss(s.log(), t.log(), 0.0), kl(t, s))
    torch.testing.assert_close(generalized_jsd_loss(s.log(), t.log(), 1.0), kl(s, t))
    m = 0.7 * s + 0.3 * t
    torch.testing.assert_close(generalized_jsd_loss(s.log(), t.log(), 0.3), 0.3 * kl(t, m) + 0.7 * kl(s, m))
    assert generalized_jsd_loss(s.log(), t.log(), 0.5)[1] == pytest.approx(0.0, abs=1e-7)
    student = s.log().clone().requires_grad_(True)
    teacher = t.log().clone().requires_grad_(True)
    generalized_jsd_loss(student, teacher, 0.5).sum().backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError):
        generalized_jsd_loss(s.log(), t.log(), 1.5)
