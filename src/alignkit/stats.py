"""Statistics every layer uses, as pure functions of numbers (no models): intervals of proportions and means, pass@k,
and the calibration of a reward model's preference probabilities.

- ``wilson_interval``: the Wilson score interval of a proportion (statsmodels);
- ``newcombe_difference``: Newcombe's interval of a difference of two proportions, with the pooled two-proportion
  z-test's p-value (statsmodels);
- ``bootstrap_interval``: the percentile bootstrap interval of a mean over units (prompts);
- ``pass_at_k``: the unbiased pass@k estimator (Chen et al. 2021);
- ``calibration_terms`` / ``ece_from_terms`` / ``reward_metrics``: accuracy, Brier score and expected calibration
  error of Bradley-Terry preference probabilities (Guo et al. 2017).

Calibration: the model's probability that the chosen response wins is p = sigma(r_c - r_r) (Bradley-Terry). The
prediction is "chosen wins" when p > 0.5, with confidence max(p, 1 - p); the ECE is sum_b (n_b / n)
|accuracy_b - confidence_b| over equal-width confidence bins in [0.5, 1]. The Brier score is mean (p - 1)^2 (the
label is always "chosen wins").
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch


def wilson_interval(successes: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (statsmodels); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def newcombe_difference(
    successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05
) -> tuple[tuple[float, float], float]:
    """(Newcombe's interval of p_a - p_b, two-sided p-value of the pooled two-proportion z-test); the p-value is 1
    when every trial of both had the same outcome (no evidence of a difference)."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    low, high = confint_proportions_2indep(
        successes_a, n_a, successes_b, n_b, method="newcomb", compare="diff", alpha=alpha
    )
    pooled = (successes_a + successes_b) / (n_a + n_b)
    if pooled in (0.0, 1.0):
        return (float(low), float(high)), 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, p = proportions_ztest([successes_a, successes_b], [n_a, n_b])
    return (float(low), float(high)), float(p)


def bootstrap_interval(values, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` ``(n,)`` (one value per prompt, resampled)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def pass_at_k(correct: list[list[bool]], k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, eq. 1) averaged over prompts; ``correct[p]``: the n samples of prompt p."""
    scores = []
    for row in correct:
        n, c = len(row), sum(row)
        scores.append(1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k))
    return sum(scores) / max(1, len(scores))


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
