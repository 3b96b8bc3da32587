"""Reward-model overoptimization (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization"): pure functions.

A gold reward model stands in for human preferences; proxy reward models are trained on the gold's labels. Then the
policy is optimized against a proxy (here best-of-n selection, or RL / DPO checkpoints) and both rewards are read at
the optimization's distance from the initial policy, d = sqrt(KL(pi || pi_init)).

- Best-of-n from one pool of m >= n samples per prompt, without drawing subsets: the unbiased estimator of
  Nakano et al. 2021 / Gao et al. 2023 (appendix). With the pool sorted by the selecting score (rank i = 1..m,
  ascending), the best of a uniform n-subset is rank i with probability C(i - 1, n - 1) / C(m, n), so
  E[eval reward of best-of-n] = sum_i C(i - 1, n - 1) / C(m, n) * eval_i.
- KL(best-of-n || pi) <= log n - (n - 1) / n (the analytic bound, ``alignkit.reward_model.best_of_n.best_of_n_kl``);
  the sampled counterpart is the plug-in KL with pi replaced by the pool's empirical distribution, below the bound
  and tending to it as the pool grows.
- Functional forms (Gao et al. eq. 1 and 2), with R(0) = 0 (rewards measured from the initial policy's mean):
  best-of-n R(d) = d (alpha - beta d), peak at d = alpha / (2 beta);
  RL R(d) = d (alpha - beta log d), peak at d = exp(alpha / beta - 1).
- Conservative scoring of a proxy ensemble (Coste et al. 2024): select by the mean, the worst case (min), the
  uncertainty-weighted mean - lambda * variance, or mean - alpha * std, and read the gold reward of what each picks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import curve_fit
from scipy.special import gammaln

CONSERVATIVE = ("mean", "min", "mean_minus_var", "mean_minus_std")


def best_of_n_weights(m: int, n: int) -> np.ndarray:
    """``(m,)`` probabilities that rank i (ascending, 1-based) is the best of a uniform n-subset of m items."""
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs 1 <= n <= pool size, got a pool of {m}")
    i = np.arange(1, m + 1)
    log_w = np.full(m, -np.inf)
    ok = i >= n
    # C(i - 1, n - 1) / C(m, n) in log space (exact for the pool sizes here, no overflow)
    log_w[ok] = (
        gammaln(i[ok]) - gammaln(n) - gammaln(i[ok] - n + 1) - (gammaln(m + 1) - gammaln(n + 1) - gammaln(m - n + 1))
    )
    w = np.exp(log_w)
    return w / w.sum()


def _tie_averaged(select: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` in ascending order of ``select``, averaged within runs of equal ``select`` (a tie is broken at
    random by best-of-n, so each tied item is equally likely to be the one picked)."""
    order = np.argsort(select, kind="stable")
    s, v = select[order], values[order].astype(float)
    out = v.copy()
    start = 0
    for end in range(1, len(s) + 1):
        if end == len(s) or s[end] != s[start]:
            out[start:end] = v[start:end].mean(axis=0)
            start = end
    return out


def unbiased_best_of_n(select, values, n: int) -> np.ndarray | float:
    """Expected ``values`` of the best-of-n under ``select``, from one pool: ``select`` ``(m,)`` scores that pick,
    ``values`` ``(m,)`` or ``(m, k)`` rewards read off the pick -> a float or ``(k,)``."""
    select, values = np.asarray(select, dtype=float), np.asarray(values, dtype=float)
    if values.shape[0] != select.shape[0]:
        raise ValueError(f"{select.shape[0]} selection scores but {values.shape[0]} values")
    w = best_of_n_weights(select.shape[0], n)
    sorted_values = _tie_averaged(select, values)
    return np.tensordot(w, sorted_values, axes=(0, 0)) if values.ndim > 1 else float(w @ sorted_values)


def pool_best_of_n_kl(m: int, n: int) -> float:
    """Plug-in estimate of KL(best-of-n || pi) with pi replaced by the pool's empirical distribution (m distinct
    samples, uniform): best-of-n with replacement picks rank i with q_i = (i/m)^n - ((i-1)/m)^n, and
    KL = sum_i q_i log(m q_i). Below the analytic bound (a discrete pi; Beirami et al. 2024) and tends to it as m
    grows; at most log m."""
    if not 1 <= n:
        raise ValueError(f"best-of-{n} needs n >= 1")
    i = np.arange(1, m + 1)
    q = (i / m) ** n - ((i - 1) / m) ** n
    nz = q > 0
    return float((q[nz] * np.log(m * q[nz])).sum())


def bon_form(d, alpha, beta):
    """Gao et al. eq. 1: R(d) = d (alpha - beta d)."""
    return d * (alpha - beta * d)


def rl_form(d, alpha, beta):
    """Gao et al. eq. 2: R(d) = d (alpha - beta log d) (0 at d = 0)."""
    d = np.asarray(d, dtype=float)
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


def fit_form(d, reward, form: str = "bon") -> dict:
    """Least-squares fit of ``form`` ("bon" or "rl") to points ``(d, reward)`` (scipy ``curve_fit``) ->
    ``{"alpha", "beta", "alpha_se", "beta_se", "d_peak", "reward_peak", "points"}``; the peak is where the fitted
    curve stops rising (inf when beta <= 0: no turnover within the form); None with fewer than 2 points at d > 0."""
    d, reward = np.asarray(d, dtype=float), np.asarray(reward, dtype=float)
    keep = d > 0
    if keep.sum() < 2:
        return None
    f = bon_form if form == "bon" else rl_form
    params, cov = curve_fit(f, d[keep], reward[keep], p0=(1.0, 0.1))
    alpha, beta = (float(x) for x in params)
    se = [float(x) for x in np.sqrt(np.clip(np.diag(cov), 0, None))] if np.all(np.isfinite(cov)) else [math.nan] * 2
    if beta <= 0:
        d_peak = math.inf
    else:
        d_peak = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    reward_peak = float(f(np.asarray(d_peak), alpha, beta)) if math.isfinite(d_peak) else math.inf
    return {"alpha": alpha, "beta": beta, "alpha_se": se[0], "beta_se": se[1], "d_peak": d_peak,
            "reward_peak": reward_peak, "points": int(keep.sum()), "form": form}  # fmt: skip


def conservative_scores(members, how: str, coefficient: float = 1.0) -> np.ndarray:
    """One selection score per sample from ``(m, k)`` ensemble rewards: ``mean``, ``min`` (worst case),
    ``mean_minus_var`` (uncertainty-weighted, mean - coefficient * variance) or ``mean_minus_std``."""
    r = np.asarray(members, dtype=float)
    if r.ndim != 2:
        raise ValueError(f"ensemble rewards must be (samples, members), got shape {r.shape}")
    if how == "mean":
        return r.mean(1)
    if how == "min":
        return r.min(1)
    if how == "mean_minus_var":
        return r.mean(1) - coefficient * r.var(1)
    if how == "mean_minus_std":
        return r.mean(1) - coefficient * r.std(1)
    raise ValueError(f"unknown scoring {how!r}: use one of {', '.join(CONSERVATIVE)}")


def overstatement_at(proxy_fit: dict, gold_fit: dict, d_max: float = math.inf) -> dict | None:
    """How much the proxy's fitted curve exceeds the gold's (same reward units) at the gold's peak, or at ``d_max``
    (the largest d measured) when gold did not peak within the measured range: the fits are not extrapolated.
    -> ``{"d", "value", "gold_peaked"}``, or None without both fits."""
    if not proxy_fit or not gold_fit:
        return None
    peaked = math.isfinite(gold_fit["d_peak"]) and gold_fit["d_peak"] <= d_max
    if not peaked and not math.isfinite(d_max):
        return None
    f = bon_form if gold_fit["form"] == "bon" else rl_form
    d = gold_fit["d_peak"] if peaked else d_max
    x = np.asarray(d)
    value = f(x, proxy_fit["alpha"], proxy_fit["beta"]) - f(x, gold_fit["alpha"], gold_fit["beta"])
    return {"d": float(d), "value": float(value), "gold_peaked": peaked}
