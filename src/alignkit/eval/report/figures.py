"""The figures of ``alignkit report`` (see ``html_report``): PNG bytes drawn with matplotlib's Agg backend from
plain data (no files read here).

- ``curve_figures``: the training curves of ``report.PLOTS`` and ``report.RL_PLOTS`` that have data, several runs
  overlaid on the same axes (one color per run, one line style per series);
- ``winrate_figure``: win rates as points with their 95% intervals as error bars, 0.5 marked.

The overoptimization figure is ``alignkit.eval.report.overopt_figure.overopt_png``, shared with
``alignkit eval overopt``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from alignkit.eval.report.markdown import PLOTS, RL_PLOTS, plt

STYLES = ["-", "--", ":", "-."]


def curve_specs() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(file name, title, [(metric, label)]) of every training-curve plot: offline ones first, then online ones."""
    specs = [(f"curve-{Path(name).stem}.png", title, series) for name, (title, series) in PLOTS.items()]
    specs += [(f"curve-rl-{Path(name).stem}.png", title, series) for name, (title, series) in RL_PLOTS.items()]
    return specs


def curve_figures(runs: list[tuple[str, list[dict]]]) -> list[tuple[str, str, bytes]]:
    """(file name, title, PNG) of each training-curve plot with data in some run; ``runs``: (label, metrics rows)."""
    figures = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name, title, series in curve_specs():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for r, (run_label, rows) in enumerate(runs):
            for s, (key, label) in enumerate(series):
                points = [(row["step"], row[key]) for row in rows if _is_number(row.get(key)) and "step" in row]
                if not points:
                    continue
                xs, ys = zip(*points)
                style = dict(color=colors[r % len(colors)], linestyle=STYLES[s % len(STYLES)])
                if len(runs) == 1:  # one run: colors tell the series apart, like the per-run report
                    style = dict(color=colors[s % len(colors)])
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, ms=3, **style,
                        label=label if len(runs) == 1 else f"{run_label}: {label}")  # fmt: skip
                drawn = True
        if drawn:
            ax.set_title(title), ax.set_xlabel("step"), ax.grid(alpha=0.3), ax.legend(fontsize="small")
            fig.tight_layout()
            figures.append((name, title, _png(fig)))
        plt.close(fig)
    return figures


def winrate_figure(rows: list[dict]) -> bytes:
    """Rows (top to bottom) of ``label``, ``rate`` with ``bootstrap`` (lo, hi), optional ``decisive_rate`` with
    ``wilson`` and ``length_controlled``: one line per row, 0.5 (no preference) marked."""
    height = 1.2 + 0.42 * len(rows)
    fig, ax = plt.subplots(figsize=(9, height))
    ys = list(range(len(rows)))
    _interval_points(ax, ys, [r["rate"] for r in rows], [r["bootstrap"] for r in rows],
                     "o", "C0", "win rate, ties as half (95% bootstrap)")  # fmt: skip
    _interval_points(ax, [y + 0.22 for y in ys], [r.get("decisive_rate") for r in rows],
                     [r.get("wilson") for r in rows], "s", "C1", "decisive only (95% Wilson)")  # fmt: skip
    lc = [(y - 0.22, r["length_controlled"]) for y, r in zip(ys, rows) if _is_finite(r.get("length_controlled"))]
    if lc:
        ax.plot([v for _, v in lc], [y for y, _ in lc], "x", color="C2", ms=7, label="length-controlled")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [r["label"] for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate of A over B")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
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


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return _is_number(v) and math.isfinite(v)
