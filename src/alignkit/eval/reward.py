"""Reward-model quality on held-out pairs: ranking accuracy, margin, and calibration of the preference probability.

The model's probability that the chosen response wins is p = sigma(r_c - r_r) (Bradley-Terry). Calibration is
measured as in Guo et al. 2017: the prediction is "chosen wins" when p > 0.5, with confidence max(p, 1 - p);
the expected calibration error (ECE) is sum_b (n_b / n) |accuracy_b - confidence_b| over equal-width confidence
bins in [0.5, 1]. The Brier score is mean (p - 1)^2 (the label is always "chosen wins").
"""

from __future__ import annotations

import torch


def calibration_terms(chosen: torch.Tensor, rejected: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """Per-pair contributions ``(n, bins)`` to the ECE: (correct - confidence) in the pair's confidence bin, else 0.

    Their mean over pairs, per bin, is (n_b / n)(accuracy_b - confidence_b): averages of these add up across
    batches and processes, and ``ece_from_terms`` turns the averages into the ECE.
    """
    p = torch.sigmoid((chosen - rejected).float())
    confidence = torch.maximum(p, 1 - p)
    correct = (chosen > rejected).float()
    index = ((confidence - 0.5) * 2 * bins).long().clamp(0, bins - 1)
    out = torch.zeros(p.shape[0], bins, device=p.device)
    out[torch.arange(p.shape[0]), index] = correct - confidence
    return out


def ece_from_terms(mean_terms: torch.Tensor | list[float]) -> float:
    """ECE from the per-bin means of ``calibration_terms``."""
    return float(torch.as_tensor(mean_terms).abs().sum())


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor, bins: int = 10) -> dict[str, float]:
    """Accuracy, mean margin, Brier, ECE and reward mean/std of ``(n,)`` chosen and rejected rewards."""
    chosen, rejected = chosen.float(), rejected.float()
    p = torch.sigmoid(chosen - rejected)
    both = torch.cat([chosen, rejected])
    return {
        "pairs": int(chosen.shape[0]),
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "brier": ((p - 1) ** 2).mean().item(),
        "ece": ece_from_terms(calibration_terms(chosen, rejected, bins).mean(0)),
        "reward_mean": both.mean().item(),
        "reward_std": both.std(unbiased=False).item(),
        "chosen_mean": chosen.mean().item(),
        "rejected_mean": rejected.mean().item(),
    }
