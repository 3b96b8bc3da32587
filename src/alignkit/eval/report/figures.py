"""Every figure of a report, as PNG bytes drawn with matplotlib's Agg backend from plain data (no files read here).

- ``curve_figures``: training curves (``PLOTS`` for offline methods, ``RL_PLOTS`` for online ones) that have data,
  one run or several overlaid on the same axes (one color per run, one line style per series);
- ``winrate_figure``: win rates as points with their 95% intervals as error bars, 0.5 marked;

Every figure is at least ``MIN_HEIGHT_IN`` inches (300 px at 100 dpi) tall, and no axis limit sits on the data: a
point at 0 or 1 (or at a curve's extreme) is drawn whole, inside the axes.
- ``overopt_png``: gold and proxy reward against d = sqrt(KL) with the fitted forms of Gao et al. 2023, and the
  gold reward under conservative scoring (``alignkit eval overopt`` and ``alignkit report``). It reads an
  ``overopt`` result: ``points`` (``method`` bon | rl | dpo, ``d``, ``gold``, ``proxy`` {name: reward}, optionally
  ``selector``: which reward model picked the best-of-n), ``fits`` keyed ``{target}_{method}`` or
  ``{target}_{method}/{selector}`` with ``alpha``/``beta``/``d_peak``, and ``scoring`` {proxy: {aggregation: [gold
  reward per n]}}.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alignkit.eval.overopt import bon_form, rl_form  # noqa: E402

PLOTS = {  # file -> (title, [(metric, label)])
    "loss.png": ("Loss", [("loss", "train"), ("eval/loss", "eval")]),
    "margins.png": (
        "Reward margin (chosen - rejected)",
        [("rewards/margins", "train"), ("eval/rewards/margins", "eval")],
    ),
    "accuracy.png": (
        "Implicit reward accuracy",
        [("rewards/accuracies", "train"), ("eval/rewards/accuracies", "eval")],
    ),
    "kl.png": (
        "log pi/pi_ref on chosen completions (KL estimate)",
        [("kl/chosen", "train"), ("eval/kl/chosen", "eval")],
    ),
}


RL_PLOTS = {  # online methods (GRPO, RLOO, PPO)
    "reward.png": ("Reward and pass rate of the sampled completions", [("reward/mean", "reward (mean)"),
                   ("pass@1/math", "pass@1"), ("pass@8/math", "pass@8"), ("eval/pass@1/math", "held-out pass@1")]),
    "length.png": ("Completion length (tokens)", [("completion/length", "mean")]),
    "entropy.png": ("Policy entropy per token (nats)", [("entropy", "train")]),
    "kl.png": ("KL to the reference per sequence", [("kl/sequence", "k1 sum"), ("kl/coef", "beta")]),
    "phases.png": ("Seconds per step by phase", [("time/generate", "generate"), ("time/reward", "reward"),
                   ("time/reference", "reference"), ("time/train", "train")]),
}  # fmt: skip

STYLES = ["-", "--", ":", "-."]
MIN_HEIGHT_IN = 3.4  # 340 px at the 100 dpi of the curves and win rates
RATE_LIMITS = (-0.05, 1.05)  # a rate axis: 0 and 1 with room for a marker


def curve_specs(plots: dict | None = None) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(file name, title, [(metric, label)]) of each training-curve plot: of ``plots`` (file name -> (title,
    series)) as named there, or (default) every offline then online plot, named ``curve-*.png`` / ``curve-rl-*.png``."""
    if plots is not None:
        return [(name, title, series) for name, (title, series) in plots.items()]
    specs = [(f"curve-{Path(name).stem}.png", title, series) for name, (title, series) in PLOTS.items()]
    specs += [(f"curve-rl-{Path(name).stem}.png", title, series) for name, (title, series) in RL_PLOTS.items()]
    return specs


def curve_figures(runs: list[tuple[str, list[dict]]], plots: dict | None = None) -> list[tuple[str, str, bytes]]:
    """(file name, title, PNG) of each training-curve plot with data in some run; ``runs``: (label, metrics rows),
    ``plots``: see ``curve_specs``."""
    figures = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name, title, series in curve_specs(plots):
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        drawn = False
        for r, (run_label, rows) in enumerate(runs):
            for s, (key, label) in enumerate(series):
                points = [(row["step"], row[key]) for row in rows if is_number(row.get(key)) and "step" in row]
                if not points:
                    continue
                xs, ys = zip(*points)
                style = dict(color=colors[r % len(colors)], linestyle=STYLES[s % len(STYLES)])
                if len(runs) == 1:  # one run: colors tell the series apart
                    style = dict(color=colors[s % len(colors)])
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, ms=3, **style,
                        label=label if len(runs) == 1 else f"{run_label}: {label}")  # fmt: skip
                drawn = True
        if drawn:
            ax.margins(x=0.03, y=0.08)  # markers at the first / last step or at an extreme are not cut
            ax.set_title(title), ax.set_xlabel("step"), ax.grid(alpha=0.3), ax.legend(fontsize="small")
            fig.tight_layout()
            figures.append((name, title, _png(fig)))
        plt.close(fig)
    return figures


def winrate_figure(rows: list[dict]) -> bytes:
    """Rows (top to bottom) of ``label``, ``rate`` with ``bootstrap`` (lo, hi), optional ``decisive_rate`` with
    ``wilson`` and ``length_controlled``: one line per row, 0.5 (no preference) marked."""
    height = max(MIN_HEIGHT_IN, 1.4 + 0.42 * len(rows))
    fig, ax = plt.subplots(figsize=(11, height))
    ys = list(range(len(rows)))
    _interval_points(ax, ys, [r["rate"] for r in rows], [r["bootstrap"] for r in rows],
                     "o", "C0", "win rate, ties as half (95% bootstrap)")  # fmt: skip
    _interval_points(ax, [y + 0.22 for y in ys], [r.get("decisive_rate") for r in rows],
                     [r.get("wilson") for r in rows], "s", "C1", "decisive only (95% Wilson)")  # fmt: skip
    lc = [(y - 0.22, r["length_controlled"]) for y, r in zip(ys, rows) if _is_finite(r.get("length_controlled"))]
    if lc:
        ax.plot([v for _, v in lc], [y for y, _ in lc], "x", color="C2", ms=7, label="length-controlled")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize="small")
    ax.set_ylim(len(rows) - 0.5, -0.6)
    ax.set_xlim(*RATE_LIMITS)
    ax.set_xticks([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    ax.set_xlabel("win rate of A over B")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def _interval_points(ax, ys, values, intervals, marker, color, label) -> None:
    """Points with asymmetric error bars; rows whose value or interval is missing or not finite are left out."""
    keep = [
        (y, v, iv)
        for y, v, iv in zip(ys, values, intervals)
        if _is_finite(v) and iv is not None and all(_is_finite(x) for x in iv)
    ]
    if not keep:
        return
    y, v, iv = zip(*keep)
    err = [[max(0.0, val - lo) for val, (lo, _) in zip(v, iv)], [max(0.0, hi - val) for val, (_, hi) in zip(v, iv)]]
    ax.errorbar(v, y, xerr=err, fmt=marker, color=color, capsize=3, label=label)


def _png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return is_number(v) and math.isfinite(v)


# ---------------------------------------------------------------------------------------- overoptimization

MARKERS = {"bon": "o", "rl": "^", "dpo": "v"}


def _fit(fits: dict, target: str, method: str, selector: str | None) -> dict | None:
    return fits.get(f"{target}_{method}/{selector}") if selector else fits.get(f"{target}_{method}")


def _curve(ax, fit: dict | None, method: str, grid: np.ndarray, color, style: str) -> None:
    if fit and _is_finite(fit.get("alpha")) and _is_finite(fit.get("beta")):
        form = bon_form if method == "bon" else rl_form
        ax.plot(grid, form(grid, fit["alpha"], fit["beta"]), style, color=color, lw=1)
        peak = fit.get("d_peak")
        if style == "-" and _is_finite(peak) and peak <= grid[-1]:
            ax.axvline(peak, color=color, ls=":", lw=0.8)


def _scoring_series(scoring) -> dict:
    """Only well-formed entries: {proxy: {aggregation: [numbers]}}."""
    if not isinstance(scoring, dict):
        return {}
    return {
        name: {how: v for how, v in by.items() if isinstance(v, list) and all(_is_finite(x) for x in v)}
        for name, by in scoring.items()
        if isinstance(by, dict)
    }


def overopt_png(result: dict, title: str = "Gold vs proxy reward (solid: gold, dashed: proxy)") -> bytes:
    """The figure as PNG bytes."""
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
        gold = [(p["d"], p["gold"]) for p in mine if _is_finite(p.get("gold"))]
        if gold:
            ax.plot(*zip(*gold), MARKERS.get(method, "D"), color=color, ms=4, label=f"gold | {name}")
        _curve(ax, _fit(fits, "gold", method, selector), method, grid, color, "-")
        for proxy in dict.fromkeys(k for p in mine for k in p["proxy"]):
            own = [(p["d"], p["proxy"][proxy]) for p in mine if _is_finite(p["proxy"].get(proxy))]
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
    png = _png(fig, dpi=110)
    plt.close(fig)
    return png


def plot_overopt(result: dict, path) -> None:
    """Write ``overopt_png(result)`` to ``path``."""
    with open(path, "wb") as f:
        f.write(overopt_png(result))
