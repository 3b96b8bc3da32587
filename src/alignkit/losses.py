"""Every loss alignkit trains with, as a pure function of log-probabilities.

Inputs are 1-D tensors of shape ``(batch,)``: summed completion log-probs log pi(y|x) for the methods
defined on sequence likelihoods (DPO, IPO, hinge, robust), or length-averaged ones where the method
says so (SimPO, ORPO, SFT). Each function returns *per-example* losses of shape ``(batch,)`` (the trainer
reduces them) and, where the method defines one, the implicit rewards of chosen and rejected completions,
detached, for logging. ``bradley_terry_loss`` takes reward-model scores instead, and ``kto_loss`` binary labels.
The RL losses (``clipped_policy_loss``, ``clipped_value_loss``) are per token ``(B, T)``: the online methods reduce
them (token mean, sequence mean, or a constant normalizer) through the trainer's per-example weights.

``LOSSES`` maps a method name to its function and declares whether it needs reference log-probs and
which log-prob reduction it expects, so the preference trainer never special-cases a method by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimization, Rafailov et al. 2023, eq. 7.

    L = -log sigma(beta * h),  h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)].

    ``label_smoothing`` = eps > 0 gives conservative DPO (cDPO, Mitchell 2023): the label is assumed
    flipped with probability eps, L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h).
    All inputs ``(batch,)`` summed log-probs. Returns (losses, chosen_rewards, rejected_rewards), each ``(batch,)``.
    """
    _check_smoothing(label_smoothing)
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Robust DPO, Chowdhury et al. 2024 ("Provably Robust DPO"), eq. 8: an unbiased loss under label noise eps.

    L = [(1 - eps) * l(h) - eps * l(-h)] / (1 - 2 eps),  l(h) = -log sigma(beta h),  eps = ``label_smoothing`` < 0.5.
    Inputs ``(batch,)`` summed log-probs. Returns (losses, chosen_rewards, rejected_rewards).
    """
    _check_smoothing(label_smoothing)
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing
    )
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Identity Preference Optimization, Azar et al. 2023 ("A General Theoretical Paradigm..."), eq. 17.

    L = (h - 1 / (2 * tau))^2 with tau = ``beta``, h the log-ratio difference as in DPO. The squared loss
    regresses the margin to a finite target instead of pushing it to infinity. alignkit passes
    length-averaged log-probs (as TRL does), which keeps the target scale independent of length.
    Inputs ``(batch,)``. Returns (losses, chosen_rewards, rejected_rewards).
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    h = chosen_logratios - rejected_logratios
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hinge preference loss of SLiC-HF, Zhao et al. 2023, eq. 2, applied to the DPO log-ratio (RSO, Liu et al. 2024).

    L = max(0, 1 - beta * h). Inputs ``(batch,)`` summed log-probs. Returns (losses, chosen_rewards, rejected_rewards).
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def simpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, beta: float = 2.0, gamma: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Simple Preference Optimization, Meng et al. 2024, eq. 6. No reference model.

    L = -log sigma(beta * avg log pi(y_w|x) - beta * avg log pi(y_l|x) - gamma), where avg is the
    length-normalized log-prob (inputs here are already averaged over completion tokens, ``(batch,)``)
    and gamma is the target reward margin. Rewards are beta * avg log pi.
    (The course notes write the margin divided by beta; the paper multiplies by beta and subtracts gamma.)
    Returns (losses, chosen_rewards, rejected_rewards).
    """
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def orpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, beta: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """Odds-ratio term of ORPO, Hong et al. 2024, eqs. 4-7. No reference model.

    odds(y|x) = P / (1 - P) with P = exp(avg log pi(y|x)) (inputs are length-averaged, ``(batch,)``, < 0);
    L_OR = -log sigma(log odds(y_w|x) - log odds(y_l|x)). Returns lambda * L_OR with lambda = ``beta``;
    the trainer adds the NLL term on chosen (ORPO's L_SFT) through its ``sft_weight`` (1.0 for ORPO).
    Rewards are beta * avg log pi. Returns (losses, chosen_rewards, rejected_rewards).
    """
    # log(1 - exp(x)) computed stably for x < 0: log1p(-exp(x)) loses precision near 0, -expm1 does not.
    # Clamp keeps log(1 - P) finite when P rounds to 1 (avg log-prob exactly 0).
    chosen, rejected = policy_chosen_logps.clamp(max=-1e-6), policy_rejected_logps.clamp(max=-1e-6)
    log_odds = (chosen - rejected) - (torch.log(-torch.expm1(chosen)) - torch.log(-torch.expm1(rejected)))
    losses = -beta * F.logsigmoid(log_odds)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


def sft_loss(logps: Tensor) -> Tensor:
    """Supervised fine-tuning negative log-likelihood: L = -log pi(y|x) averaged over completion tokens.

    ``logps`` ``(batch,)`` length-averaged completion log-probs. Returns per-example losses ``(batch,)``.
    Also the NLL term added to preference losses (ORPO's L_SFT; RPO, Pang et al. 2024).
    """
    return -logps


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | float = 0.0,
    center_weight: float = 0.0,
) -> Tensor:
    """Pairwise reward-model loss: Bradley & Terry 1952, as in Ouyang et al. 2022 (InstructGPT), eq. 1.

    L = -log sigma(r(x, y_w) - r(x, y_l) - m) + eta * (r(x, y_w) + r(x, y_l))^2.
    ``margin`` m ``(batch,)`` or scalar: the required reward gap (Touvron et al. 2023, Llama 2, eq. 2).
    ``center_weight`` eta: reward centering, keeps rewards near zero mean (Eisenstein et al. 2023).
    Rewards ``(batch,)`` scalar outputs of the reward model. Returns per-example losses ``(batch,)``.
    """
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - margin)
    if center_weight:
        losses = losses + center_weight * (chosen_rewards + rejected_rewards) ** 2
    return losses


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor, all_reduce=None) -> Tensor:
    """KTO's reference point z_ref, Ethayarajh et al. 2024, sec. 4.1: a batch estimate of KL(pi || pi_ref).

    Computed on mismatched pairs (x_i, y_j), j != i, so it does not depend on the completions being scored:
    z_ref = max(0, mean_i [log pi(y_j|x_i) - log pi_ref(y_j|x_i)]), detached (no gradient flows through it).
    The course notes call it a running average; the paper (and TRL) use this per-batch estimate, which plays
    the same role. Inputs ``(batch,)`` summed log-probs; returns a scalar tensor. ``all_reduce`` (optional, in
    place, sum) makes the mean run over every process's batch, as TRL gathers the KL terms across processes.
    """
    ratios = (policy_kl_logps - ref_kl_logps).detach().float()
    totals = torch.stack([ratios.sum(), torch.tensor(float(ratios.numel()), device=ratios.device)])
    if all_reduce is not None:
        all_reduce(totals)
    return (totals[0] / totals[1]).clamp(min=0).to(policy_kl_logps.dtype)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    reference_point: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Kahneman-Tversky Optimization, Ethayarajh et al. 2024, eq. 8 (binary feedback, no pairs).

    r = log pi(y|x) - log pi_ref(y|x);  v = lambda_D sigma(beta (r - z_ref)) if y is desirable,
    lambda_U sigma(beta (z_ref - r)) if undesirable;  L = lambda_y - v.
    ``desirable`` ``(batch,)`` bool labels; log-probs ``(batch,)`` summed; ``reference_point`` from
    ``kto_reference_point``. Returns (per-example losses ``(batch,)``, rewards beta * r detached).
    """
    logratios = policy_logps - ref_logps
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - reference_point)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (reference_point - logratios)))
    return torch.where(desirable.bool(), desirable_losses, undesirable_losses), beta * logratios.detach()


def clipped_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, clip_low: float = 0.2, clip_high: float = 0.2
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate objective (Schulman et al. 2017, eq. 7) per token, with separate lower and upper
    clip ranges (DAPO's clip-higher, Yu et al. 2025, eq. 10); GRPO uses the same objective (Shao et al. 2024, eq. 3).

    rho = pi(y_t) / pi_old(y_t) = exp(logps - old_logps);
    L_t = -min(rho A_t, clip(rho, 1 - eps_low, 1 + eps_high) A_t).
    ``logps``, ``old_logps`` ``(B, T)``, ``advantages`` ``(B, T)`` or ``(B, 1)`` (one per sequence, broadcast).
    Returns per-token losses ``(B, T)`` and, detached, where the lower / upper clip was active ``(B, T)`` bool
    (rho < 1 - eps_low with A < 0, rho > 1 + eps_high with A > 0: the tokens whose gradient the clip removed).
    """
    ratio = torch.exp(logps - old_logps)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    losses = -torch.minimum(ratio * advantages, clipped * advantages)
    ratio, advantages = ratio.detach(), advantages.detach()
    return losses, (ratio < 1.0 - clip_low) & (advantages < 0), (ratio > 1.0 + clip_high) & (advantages > 0)


def gspo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, Tensor, Tensor]:
    """GSPO's clipped objective with a sequence-level importance ratio (Zheng et al. 2025, "Group Sequence Policy
    Optimization", eq. 5-7), in its token form (GSPO-token, eq. 13), which has the same value and gradient:

    s_i = exp(mean_t over the completion of (logps - old_logps));  s_i,t = sg[s_i] * pi(y_t) / sg[pi(y_t)];
    L_i,t = -min(s_i,t A_i, clip(s_i,t, 1 - eps_low, 1 + eps_high) A_i).
    Averaged over each completion's tokens (``loss_aggregation: sequence_mean``) this is exactly GSPO: gradient
    s_i A_i mean_t grad log pi(y_t) while the sequence ratio is inside the clip range. The paper's ranges are
    3e-4 / 4e-4 (a sequence ratio moves far less than a token's). ``logps``, ``old_logps``, ``mask`` ``(B, T)``,
    ``advantages`` ``(B, 1)`` or ``(B, T)``; returns per-token losses ``(B, T)`` and the clip masks as
    ``clipped_policy_loss`` does (per sequence, broadcast over its tokens)."""
    m = mask.to(logps.dtype)
    mean_logratio = ((logps - old_logps) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    seq_ratio = torch.exp(mean_logratio).detach()  # (B, 1)
    ratio = seq_ratio * torch.exp(logps - logps.detach())  # value s_i, gradient s_i * grad log pi(y_t)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    losses = -torch.minimum(ratio * advantages, clipped * advantages)
    seq, adv = seq_ratio.expand_as(logps), advantages.detach().expand_as(logps)
    return losses, (seq < 1.0 - clip_low) & (adv < 0), (seq > 1.0 + clip_high) & (adv > 0)


def cispo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 1.0,
    clip_high: float = 0.28,
) -> tuple[Tensor, Tensor, Tensor]:
    """CISPO (MiniMax 2025, "MiniMax-M1", eq. 4-5): REINFORCE with the importance-sampling weight clipped and
    stopped from the gradient, so no token's gradient is dropped (PPO's clip zeroes clipped tokens):

    r_t = pi(y_t) / pi_old(y_t);  L_t = -sg[clip(r_t, 1 - eps_low, 1 + eps_high)] A_t log pi(y_t).
    The paper clips only from above (eps_low large: no lower bound in effect). ``logps``, ``old_logps``, ``mask``
    ``(B, T)``, ``advantages`` ``(B, 1)`` or ``(B, T)``; returns per-token losses ``(B, T)`` and where the weight
    was clipped below / above ``(B, T)`` bool."""
    ratio = torch.exp(logps - old_logps).detach()
    weight = ratio.clamp(max(0.0, 1.0 - clip_low), 1.0 + clip_high)
    losses = -weight * advantages.detach() * logps
    return losses, ratio < 1.0 - clip_low, ratio > 1.0 + clip_high


def ppo_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 0.2, clip_high: float = 0.2
) -> tuple[Tensor, Tensor, Tensor]:
    """``clipped_policy_loss`` with the policy-loss registry's signature (``mask`` unused: per-token)."""
    return clipped_policy_loss(logps, old_logps, advantages, clip_low, clip_high)


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {
    "ppo": ppo_policy_loss,  # PPO / GRPO / DAPO's token-level clipped ratio
    "gspo": gspo_policy_loss,  # sequence-level ratio
    "cispo": cispo_policy_loss,  # clipped, stop-gradient importance weight
}


def rollout_correction_weights(
    trainer_logps: Tensor,
    sampler_logps: Tensor,
    mask: Tensor,
    how: str = "truncate",
    level: str = "token",
    threshold: float = 2.0,
) -> Tensor:
    """Importance weights for the gap between the sampling engine and the trainer (the same weights, different
    kernels or precision: vLLM in bf16, a fused decode step), to multiply the per-token policy loss with.

    rho = pi_trainer(y) / pi_sampler(y) per token, or for the whole sequence exp(sum over its tokens of the log
    ratio) (``level``). ``truncate`` (TIS; Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
    Off-Policy RL Training"): w = min(rho, threshold). ``mask`` (MIS; Liu et al. 2025, "When Speed Kills
    Stability: Demystifying RL Collapse from the Training-Inference Mismatch"): w = 1 where 1 / threshold <= rho
    <= threshold, else 0 (the token, or the whole sequence, leaves the loss). ``trainer_logps``,
    ``sampler_logps``, ``mask`` ``(B, T)``; returns detached weights ``(B, T)`` (0 outside ``mask``)."""
    if how not in ("truncate", "mask") or level not in ("token", "sequence") or threshold <= 1:
        raise ValueError(f"rollout correction {how}/{level}/{threshold}: use truncate|mask, token|sequence, > 1")
    log_rho = (trainer_logps - sampler_logps).detach() * mask
    if level == "sequence":
        log_rho = log_rho.sum(-1, keepdim=True).expand_as(mask)
    rho = log_rho.clamp(max=math.log(1e6)).exp()
    if how == "truncate":
        weights = rho.clamp(max=threshold)
    else:
        weights = ((rho >= 1 / threshold) & (rho <= threshold)).to(rho.dtype)
    return weights * mask


def generalized_jsd_loss(student_logps: Tensor, teacher_logps: Tensor, beta: float = 0.5) -> Tensor:
    """The generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, "On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes", sec. 3) per position, between the student's (S) and the
    teacher's (T) next-token distributions at the same positions (on-policy: positions of the student's samples).

    M = (1 - beta) S + beta T;  JSD_beta = beta KL(T || M) + (1 - beta) KL(S || M). Near beta = 0 it behaves as
    beta KL(T || S) and near beta = 1 as (1 - beta) KL(S || T), so the end points are taken to be those KLs (as in
    TRL's GKD trainer): beta = 0 -> forward KL(T || S) (mode covering), beta = 1 -> reverse KL(S || T) (mode
    seeking, the usual on-policy distillation objective). ``student_logps``, ``teacher_logps``: log-probabilities
    ``(N, V)``; returns ``(N,)``; the teacher is a constant (no gradient)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta {beta}: use a value in [0, 1]")
    teacher_logps = teacher_logps.detach()
    if beta == 0:
        return (teacher_logps.exp() * (teacher_logps - student_logps)).sum(-1)
    if beta == 1:
        return (student_logps.exp() * (student_logps - teacher_logps)).sum(-1)
    log_m = torch.logsumexp(torch.stack([student_logps + math.log(1 - beta), teacher_logps + math.log(beta)]), 0)
    kl_teacher = (teacher_logps.exp() * (teacher_logps - log_m)).sum(-1)
    kl_student = (student_logps.exp() * (student_logps - log_m)).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None = 0.2) -> Tensor:
    """PPO's value loss with the value clipped around its rollout-time estimate (as in OpenAI's baselines ppo2):
    L_t = 0.5 max((V_t - R_t)^2, (clip(V_t, V_old - eps, V_old + eps) - R_t)^2); ``clip`` None = unclipped MSE.
    All inputs ``(B, T)``; returns per-token losses ``(B, T)``."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped)


def _logratios(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> tuple[Tensor, Tensor]:
    """log pi/pi_ref of chosen and of rejected, each ``(batch,)``; their difference is h."""
    return policy_chosen - ref_chosen, policy_rejected - ref_rejected


def _check_smoothing(eps: float) -> None:
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {eps}")


@dataclass(frozen=True)
class LossSpec:
    """How a preference loss is called.

    ``fn``: the loss. ``needs_reference``: takes reference log-probs (no reference forward otherwise).
    ``average_logps``: expects length-averaged instead of summed completion log-probs.
    ``params``: the hyper-parameter names the loss accepts besides the log-probs.
    ``default_sft_weight``: weight of the NLL-on-chosen term the method itself defines (ORPO: 1).
    """

    fn: Callable[..., tuple[Tensor, Tensor, Tensor]]
    needs_reference: bool
    average_logps: bool
    params: tuple[str, ...]
    default_sft_weight: float = 0.0


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss, True, False, ("beta", "label_smoothing")),
    "robust": LossSpec(robust_dpo_loss, True, False, ("beta", "label_smoothing")),
    "ipo": LossSpec(ipo_loss, True, True, ("beta",)),
    "hinge": LossSpec(hinge_loss, True, False, ("beta",)),
    "simpo": LossSpec(simpo_loss, False, True, ("beta", "gamma")),
    "orpo": LossSpec(orpo_loss, False, True, ("beta",), default_sft_weight=1.0),
}
