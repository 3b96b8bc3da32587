"""Conservative aggregation of ensemble rewards (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization"): the mean, the worst case (min), a low percentile, or uncertainty-weighted mean - alpha*std.
"""

from __future__ import annotations

import torch

from alignkit.errors import UserError

AGGREGATIONS = ("mean", "min", "percentile", "mean_minus_std")


def uncertainty(rewards: torch.Tensor) -> torch.Tensor:
    """Disagreement of ensemble members: population std over ``(n, k)`` rewards -> ``(n,)`` (0 when k = 1)."""
    return rewards.float().std(dim=-1, unbiased=False)


def aggregate(rewards: torch.Tensor, how: str = "mean", alpha: float = 1.0, percentile: float = 10.0) -> torch.Tensor:
    """One reward per row of ``(n, k)`` member rewards -> ``(n,)``.

    ``mean``; ``min`` (worst-case optimization); ``percentile`` (the ``percentile``-th percentile over members,
    linear interpolation); ``mean_minus_std`` (uncertainty-weighted optimization: mean - alpha * std).
    """
    rewards = rewards.float()
    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must be (n, k) with k >= 1, got shape {tuple(rewards.shape)}")
    if how == "mean":
        return rewards.mean(-1)
    if how == "min":
        return rewards.min(-1).values
    if how == "percentile":
        if not 0 <= percentile <= 100:
            raise UserError(f"percentile {percentile} is outside [0, 100]. Fix: use e.g. 10")
        return torch.quantile(rewards, percentile / 100, dim=-1)
    if how == "mean_minus_std":
        if alpha < 0:
            raise UserError(f"alpha {alpha} is negative. Fix: use alpha >= 0 (0 = plain mean)")
        return rewards.mean(-1) - alpha * uncertainty(rewards)
    raise UserError(f"unknown aggregation '{how}'. Fix: use one of {', '.join(AGGREGATIONS)}")
