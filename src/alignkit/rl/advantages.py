"""Advantages: how much better a sampled completion (or token) did than a baseline.

Sequence-level estimators take rewards ``(P, G)``: P prompts x G samples each, with a ``valid`` mask of the same
shape (False where a reward function gave no reward: those samples are left out of every statistic and get
advantage 0). ``gae`` works per token on ``(B, T)`` right-padded rows. Statistics over the whole batch (batch std,
whitening) take optional global sums from the caller so several processes normalize alike (``GlobalStats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Moments:
    """Count, mean and (population) variance of the valid entries of a tensor, over every process."""

    count: float
    mean: float
    var: float

    @property
    def std(self) -> float:
        return self.var**0.5


def moments(x: Tensor, valid: Tensor, all_reduce: Callable | None = None) -> Moments:
    """``Moments`` of ``x[valid]``; ``all_reduce`` (in place, sum over processes) makes them global."""
    x, valid = x.detach().double(), valid.bool()
    sums = torch.stack([valid.sum().double(), x[valid].sum(), (x[valid] ** 2).sum()])
    if all_reduce is not None:
        all_reduce(sums)
    n = float(sums[0])
    if n == 0:
        return Moments(0.0, 0.0, 0.0)
    mean = float(sums[1]) / n
    return Moments(n, mean, max(float(sums[2]) / n - mean**2, 0.0))


def group_advantages(
    rewards: Tensor, valid: Tensor, scale: str = "group", eps: float = 1e-4, batch: Moments | None = None
) -> Tensor:
    """GRPO's group-relative advantages (Shao et al. 2024, DeepSeekMath, sec. 4.1.2): A_i = (r_i - mean_g) / s.

    rewards, valid ``(P, G)``. ``scale``: ``group`` = the group's sample std (unbiased, as TRL), ``batch`` = the
    std of all valid rewards (``batch``: global ``Moments``; Dr. GRPO / REINFORCE++-baseline style), ``none`` = no
    scaling (Dr. GRPO, Liu et al. 2025, which shows the group std biases toward easy and hard prompts). A group with
    fewer than 2 valid samples has no baseline: advantage 0. Returns ``(P, G)``.
    """
    v = valid.bool()
    r = torch.where(v, rewards.float(), 0.0)
    n = v.sum(-1, keepdim=True)
    mean = r.sum(-1, keepdim=True) / n.clamp(min=1)
    centered = torch.where(v, r - mean, 0.0)
    if scale == "group":
        std = ((centered**2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        centered = centered / (std + eps)
    elif scale == "batch":
        std = (batch if batch is not None else moments(rewards, v)).std
        centered = centered / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return torch.where(n >= 2, centered, 0.0)


def rloo_advantages(rewards: Tensor, valid: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, eq. 6): each sample's baseline is the mean
    reward of the *other* samples of its prompt, A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean).

    rewards, valid ``(P, G)``; only valid samples count, and a prompt with fewer than 2 valid samples gets 0.
    Returns ``(P, G)``.
    """
    v = valid.bool()
    r = torch.where(v, rewards.float(), 0.0)
    n = v.sum(-1, keepdim=True)
    others = (r.sum(-1, keepdim=True) - r) / (n - 1).clamp(min=1)
    return torch.where(v & (n >= 2), r - others, 0.0)


def whiten(
    x: Tensor, valid: Tensor, shift_mean: bool = True, eps: float = 1e-8, stats: Moments | None = None
) -> Tensor:
    """(x - mean) / std over the valid entries (``stats``: global moments, else this tensor's); invalid -> 0.

    Advantage whitening in PPO (as in OpenAI's baselines and TRL) and REINFORCE++'s batch normalization (Hu 2025).
    With ``shift_mean=False`` only the scale changes (used for rewards)."""
    m = stats if stats is not None else moments(x, valid)
    out = (x - m.mean) / (m.std + eps) if shift_mean else x / (m.std + eps)
    return torch.where(valid.bool(), out, 0.0)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 16) per token.

    rewards, values, mask ``(B, T)``: a row's tokens are the ``mask`` ones (right padding after them; the value
    after the last token is 0, the episode ends there). delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}; returns R_t = A_t + V_t (the value target). Both ``(B, T)``, 0 on padding.
    """
    mask = mask.float()
    rewards, values = rewards.float() * mask, values.float() * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(last)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m
        advantages[:, t] = last
        # padding (m = 0) passes nothing back: the next real token sees V = 0 and A = 0 beyond the row's end
        next_value = values[:, t] * m
    return advantages, (advantages + values) * mask


# --------------------------------------------------------------------------------------------- the registry


def grpo_estimator(rewards: Tensor, valid: Tensor, scale: str = "group", all_reduce: Callable | None = None) -> Tensor:
    """GRPO: ``group_advantages`` with the group's std, the batch's (moments over every process) or none."""
    batch = moments(rewards, valid, all_reduce) if scale == "batch" else None
    return group_advantages(rewards, valid, scale, batch=batch)


def rloo_estimator(rewards: Tensor, valid: Tensor, scale: str = "group", all_reduce: Callable | None = None) -> Tensor:
    """RLOO: ``rloo_advantages`` (no scaling: ``scale`` does not apply)."""
    return rloo_advantages(rewards, valid)


def reinforce_pp_estimator(
    rewards: Tensor, valid: Tensor, scale: str = "group", all_reduce: Callable | None = None
) -> Tensor:
    """REINFORCE++-baseline (Hu 2025): r - group mean, then whitened over the whole batch (every process)."""
    centered = group_advantages(rewards, valid, "none")
    return whiten(centered, valid, stats=moments(centered, valid, all_reduce))


# Sequence-level advantage estimators by name, beside ``alignkit.losses.LOSSES``: each maps rewards and a valid mask
# ``(P, G)`` (P prompts x G samples), GRPO's ``scale`` and an optional in-place ``all_reduce`` (sum over processes)
# to advantages ``(P, G)``. ``alignkit train grpo|rloo`` picks one by name (``method.advantage``).
ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_estimator,
    "rloo": rloo_estimator,
    "reinforce_pp": reinforce_pp_estimator,
}
