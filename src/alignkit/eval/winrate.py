"""Win rates with honest intervals: pure functions on judged outcomes (no models here).

An outcome is the result for policy A on one prompt: 1.0 (A wins), 0.0 (B wins) or 0.5 (tie). From a list of them:

- ``win_rate``: wins / ties / losses, the win rate over decisive comparisons with a 95% Wilson interval, the win
  rate with ties counted as half with a bootstrap interval over prompts, a length-controlled win rate and a
  per-category breakdown;
- ``length_controlled_win_rate``: a binomial GLM (statsmodels) of the outcome on the length difference scaled by
  its standard deviation (not centered: zero means "same length"), predicted at zero difference, in the spirit of
  AlpacaEval 2.0's LC win rate (Dubois et al. 2024);
- ``swap_rule``: MT-Bench's rule for a pairwise judge asked in both orders (Zheng et al. 2023): inconsistent
  verdicts are ties;
- ``bradley_terry``: ratings of several models from pairwise outcomes with bootstrap intervals, on the Elo scale
  Chatbot Arena reports (Chiang et al. 2024).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from alignkit.stats import bootstrap_interval, wilson_interval

OUTCOMES = (0.0, 0.5, 1.0)


@dataclass
class WinRate:
    """A vs B on ``n`` prompts; rates are A's."""

    wins: int
    ties: int
    losses: int
    decisive_rate: float  # wins / (wins + losses); nan when nothing was decisive
    wilson: tuple[float, float]  # 95% Wilson interval of decisive_rate
    rate: float  # (wins + ties / 2) / n
    bootstrap: tuple[float, float]  # percentile bootstrap interval of rate, resampling prompts
    length_controlled: float | None = None  # None without lengths, or when the fit is impossible
    per_category: dict[str, WinRate] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def check_outcomes(outcomes) -> np.ndarray:
    """Outcomes as a float array ``(n,)``; each must be 0, 0.5 or 1."""
    values = np.asarray(list(outcomes), dtype=float)
    bad = [i for i, v in enumerate(values) if v not in OUTCOMES]
    if bad:
        raise ValueError(f"outcome {values[bad[0]]!r} at position {bad[0]}: use 1 (A wins), 0 (B wins) or 0.5 (tie)")
    return values


def length_controlled_win_rate(outcomes, length_diff) -> float | None:
    """P(A wins | same length) from a binomial GLM of ``outcomes`` ``(n,)`` (ties as 0.5) on ``length_diff``
    ``(n,)`` (len A - len B) divided by its standard deviation; None when the lengths never differ, the outcomes
    never vary, or the fit does not converge (e.g. length separates the outcomes perfectly)."""
    import statsmodels.api as sm

    y, d = check_outcomes(outcomes), np.asarray(list(length_diff), dtype=float)
    if y.shape != d.shape:
        raise ValueError(f"{y.size} outcomes but {d.size} length differences")
    scale = d.std()
    if y.size < 3 or scale == 0 or np.all(y == y[0]):
        return None
    x = sm.add_constant(d / scale, has_constant="add")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns on (quasi-)separation; we check convergence instead
        try:
            fit = sm.GLM(y, x, family=sm.families.Binomial()).fit()
        except (ValueError, np.linalg.LinAlgError):
            return None
    if not fit.converged or not np.all(np.isfinite(fit.params)) or abs(fit.params[1]) > 30:
        return None
    return float(1.0 / (1.0 + math.exp(-fit.params[0])))


def win_rate(
    outcomes, length_diff=None, categories=None, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> WinRate:
    """The statistics of A vs B; ``length_diff`` ``(n,)`` and ``categories`` ``(n,)`` (strings) are optional."""
    y = check_outcomes(outcomes)
    wins, ties, losses = int((y == 1).sum()), int((y == 0.5).sum()), int((y == 0).sum())
    decisive = wins + losses
    result = WinRate(
        wins=wins, ties=ties, losses=losses,
        decisive_rate=wins / decisive if decisive else math.nan,
        wilson=wilson_interval(wins, decisive, alpha) if decisive else (math.nan, math.nan),
        rate=float(y.mean()) if y.size else math.nan,
        bootstrap=bootstrap_interval(y, n_boot, seed, alpha),
        length_controlled=length_controlled_win_rate(y, length_diff) if length_diff is not None else None,
    )  # fmt: skip
    if categories is not None:
        cats = list(categories)
        if len(cats) != y.size:
            raise ValueError(f"{y.size} outcomes but {len(cats)} categories")
        for cat in sorted(set(cats)):
            idx = [i for i, c in enumerate(cats) if c == cat]
            result.per_category[cat] = win_rate(y[idx], n_boot=n_boot, seed=seed, alpha=alpha)
    return result


def swap_rule(first: float, second: float) -> float:
    """A's outcome from a judge asked twice: ``first`` with A shown first, ``second`` with A shown second (both
    already in A's terms: 1 A wins, 0 B wins, 0.5 tie). Agreeing verdicts stand; any disagreement is a tie."""
    first, second = check_outcomes([first, second])
    return float(first) if first == second else 0.5


def bradley_terry(
    comparisons, n_boot: int = 200, seed: int = 0, alpha: float = 0.05, anchor: float = 1000.0
) -> dict[str, tuple[float, float, float]]:
    """Bradley-Terry ratings from ``comparisons``: ``(model_a, model_b, outcome for a)`` triples, ties as 0.5.

    Fitted by a binomial GLM without intercept on +1/-1 indicator columns (statsmodels), one model's strength
    fixed at 0, then put on the Elo scale (400 / ln 10 per unit of log-strength) with the mean rating at
    ``anchor``. Returns ``{model: (rating, low, high)}`` with percentile bootstrap intervals over comparisons."""
    rows = list(comparisons)
    if not rows:
        raise ValueError("no comparisons to rate")
    models = sorted({m for a, b, _ in rows for m in (a, b)})
    if len(models) < 2:
        raise ValueError("Bradley-Terry needs comparisons between at least two models")
    index = {m: i for i, m in enumerate(models)}
    x = np.zeros((len(rows), len(models)))
    for r, (a, b, _) in enumerate(rows):
        if a == b:
            raise ValueError(f"comparison {r} pits {a!r} against itself")
        x[r, index[a]], x[r, index[b]] = 1.0, -1.0
    y = check_outcomes(o for _, _, o in rows)
    point = _bt_fit(x, y)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(rows), size=len(rows))
        fitted = _bt_fit(x[pick], y[pick])
        if fitted is not None:
            boots.append(fitted)
    if point is None:
        raise ValueError("Bradley-Terry ratings do not exist for these comparisons (a model always wins or always "
                         "loses, or the models are not all connected): add comparisons or ties")  # fmt: skip
    scale = 400.0 / math.log(10.0)
    to_elo = lambda s: anchor + scale * (s - s.mean())
    rating = to_elo(point)
    if boots:
        lows, highs = np.quantile(np.stack([to_elo(b) for b in boots]), [alpha / 2, 1 - alpha / 2], axis=0)
    else:
        lows = highs = np.full(len(models), math.nan)
    return {m: (float(rating[i]), float(lows[i]), float(highs[i])) for i, m in enumerate(models)}


def _bt_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Log-strengths ``(models,)`` (first model fixed at 0), or None when the fit does not exist."""
    import statsmodels.api as sm

    design = x[:, 1:]
    if np.linalg.matrix_rank(design) < design.shape[1] or np.all(y == y[0]) and y[0] != 0.5:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = sm.GLM(y, design, family=sm.families.Binomial()).fit()
        except (ValueError, np.linalg.LinAlgError):
            return None
    params = np.concatenate([[0.0], fit.params])
    if not fit.converged or not np.all(np.isfinite(params)) or np.abs(params).max() > 30:
        return None
    return params
