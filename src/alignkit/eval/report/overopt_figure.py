"""The overoptimization plot, for ``alignkit eval overopt`` and ``alignkit report``: gold and proxy reward against
d = sqrt(KL) with the fitted forms of Gao et al. 2023, and the gold reward under conservative scoring.

It reads an ``overopt`` result (``overopt_run.run_overopt``'s JSON): ``points`` (``method`` bon | rl | dpo, ``d``,
``gold``, ``proxy`` {name: reward}, optionally ``selector``: which reward model picked the best-of-n), ``fits``
keyed ``{target}_{method}`` or ``{target}_{method}/{selector}`` with ``alpha``/``beta``/``d_peak``, and ``scoring``
{proxy: {aggregation: [gold reward per n]}}.
"""

from __future__ import annotations

import io
import math

import numpy as np

from alignkit.eval.overopt import bon_form, rl_form

MARKERS = {"bon": "o", "rl": "^", "dpo": "v"}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fit(fits: dict, target: str, method: str, selector: str | None) -> dict | None:
    return fits.get(f"{target}_{method}/{selector}") if selector else fits.get(f"{target}_{method}")


def _curve(ax, fit: dict | None, method: str, grid: np.ndarray, color, style: str) -> None:
    if fit and _finite(fit.get("alpha")) and _finite(fit.get("beta")):
        form = bon_form if method == "bon" else rl_form
        ax.plot(grid, form(grid, fit["alpha"], fit["beta"]), style, color=color, lw=1)
        peak = fit.get("d_peak")
        if style == "-" and _finite(peak) and peak <= grid[-1]:
            ax.axvline(peak, color=color, ls=":", lw=0.8)


def _scoring_series(scoring) -> dict:
    """Only well-formed entries: {proxy: {aggregation: [numbers]}}."""
    if not isinstance(scoring, dict):
        return {}
    return {
        name: {how: v for how, v in by.items() if isinstance(v, list) and all(_finite(x) for x in v)}
        for name, by in scoring.items()
        if isinstance(by, dict)
    }


def overopt_png(result: dict, title: str = "Gold vs proxy reward (solid: gold, dashed: proxy)") -> bytes:
    """The figure as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, fits = result["points"], result.get("fits") or {}
    scoring = {k: v for k, v in _scoring_series(result.get("scoring")).items() if v}
    fig, axes = plt.subplots(1, 2 if scoring else 1, figsize=(11 if scoring else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dmax = max([p["d"] for p in points] + [0.1])
    grid = np.linspace(1e-3, dmax * 1.05, 100)
    groups = list(dict.fromkeys((p["method"], p.get("selector")) for p in points))
    for c, (method, selector) in enumerate(groups):
        color = colors[c % len(colors)]
        mine = sorted(
            (p for p in points if (p["method"], p.get("selector")) == (method, selector)), key=lambda p: p["d"]
        )
        name = selector or {"bon": "best-of-n", "rl": "RL", "dpo": "DPO"}.get(method, method)
        gold = [(p["d"], p["gold"]) for p in mine if _finite(p.get("gold"))]
        if gold:
            ax.plot(*zip(*gold), MARKERS.get(method, "D"), color=color, ms=4, label=f"gold | {name}")
        _curve(ax, _fit(fits, "gold", method, selector), method, grid, color, "-")
        for proxy in dict.fromkeys(k for p in mine for k in p["proxy"]):
            own = [(p["d"], p["proxy"][proxy]) for p in mine if _finite(p["proxy"].get(proxy))]
            if own:
                label = f"proxy | {name}" if proxy == selector else f"{proxy} | {name}"
                ax.plot(*zip(*own), MARKERS.get(method, "D"), mfc="none", color=color, ms=4, label=label)
            fit = _fit(fits, "proxy", method, selector) if proxy == selector else _fit(fits, proxy, method, None)
            _curve(ax, fit, method, grid, color, "--")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("d = sqrt(KL to the initial policy); best-of-n at the bound log n - (n-1)/n")
    ax.set_ylabel("reward")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7), ax.grid(alpha=0.3)
    if scoring:
        ax = axes[0][1]
        ns = result.get("ns") or []
        for c, (name, by) in enumerate(scoring.items()):
            for how, style in zip(by, ("-o", "-v", "-s", "-d", "-^")):
                d = (
                    [math.sqrt(math.log(n) - (n - 1) / n) for n in ns]
                    if len(ns) == len(by[how])
                    else range(len(by[how]))
                )
                ax.plot(d, by[how], style, color=colors[c % len(colors)], ms=3, lw=1, label=f"{name}: {how}")
        ax.set_xlabel("d = sqrt(KL)"), ax.set_ylabel("gold reward of the pick")
        ax.set_title(f"Conservative scoring (lambda = alpha = {result.get('coefficient', 1.0)})", fontsize=10)
        ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_overopt(result: dict, path) -> None:
    """Write ``overopt_png(result)`` to ``path``."""
    with open(path, "wb") as f:
        f.write(overopt_png(result))
