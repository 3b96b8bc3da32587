"""The overoptimization plot: gold and proxy reward against d = sqrt(KL), fitted forms, conservative scoring."""

from __future__ import annotations

import math

import numpy as np

from alignkit.eval.overopt import CONSERVATIVE, bon_form, rl_form


def plot_overopt(result: dict, path) -> None:
    """Left: per selector, gold (solid) and its own proxy score (dashed) of best-of-n, with fitted curves and RL/DPO
    checkpoints as points; right: gold reward of best-of-n under each conservative scoring of the proxies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scoring = result.get("scoring") or {}
    fig, axes = plt.subplots(1, 2 if scoring else 1, figsize=(11 if scoring else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    bon = [p for p in result["points"] if p["method"] == "bon"]
    selectors = list(dict.fromkeys(p["selector"] for p in bon))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dmax = max([p["d"] for p in result["points"]] + [0.1])
    grid = np.linspace(1e-3, dmax * 1.05, 100)
    for c, name in enumerate(selectors):
        color = colors[c % len(colors)]
        mine = [p for p in bon if p["selector"] == name]
        d = [p["d"] for p in mine]
        ax.plot(d, [p["gold"] for p in mine], "o", color=color, ms=4, label=f"gold | {name}")
        fit = (result.get("fits") or {}).get(f"gold_bon/{name}")
        if fit:
            ax.plot(grid, bon_form(grid, fit["alpha"], fit["beta"]), "-", color=color, lw=1)
        if mine[0]["proxy"]:
            ax.plot(d, [p["proxy"][name] for p in mine], "s", mfc="none", color=color, ms=4, label=f"proxy | {name}")
            pfit = result["fits"].get(f"proxy_bon/{name}")
            if pfit:
                ax.plot(grid, bon_form(grid, pfit["alpha"], pfit["beta"]), "--", color=color, lw=1)
        if fit and fit["d_peak"] is not None and math.isfinite(fit["d_peak"]) and fit["d_peak"] <= dmax * 1.05:
            ax.axvline(fit["d_peak"], color=color, ls=":", lw=0.8)
    rl = [p for p in result["points"] if p["method"] == "rl"]
    if rl:
        ax.plot([p["d"] for p in rl], [p["gold"] for p in rl], "k^", ms=6, label="gold | checkpoints")
        fit = result["fits"].get("gold_rl")
        if fit:
            ax.plot(grid, rl_form(grid, fit["alpha"], fit["beta"]), "k-", lw=1)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("d = sqrt(KL) (nats^0.5); best-of-n at the bound log n - (n-1)/n")
    ax.set_ylabel("reward (std of the initial policy's)")
    ax.set_title("Gold vs proxy reward (solid: gold, dashed: proxy)")
    ax.legend(fontsize=7), ax.grid(alpha=0.3)
    if scoring:
        ax = axes[0][1]
        d = [math.sqrt(p["kl"]) for p in bon if p["selector"] == selectors[0]]
        for c, (name, by) in enumerate(scoring.items()):
            for how, style in zip(CONSERVATIVE, ("-o", "-v", "-s", "-d")):
                ax.plot(d, by[how], style, color=colors[c % len(colors)], ms=3, lw=1, label=f"{name}: {how}")
        ax.set_xlabel("d = sqrt(KL)"), ax.set_ylabel("gold reward of the pick")
        ax.set_title(f"Conservative scoring (lambda = alpha = {result.get('coefficient', 1.0)})")
        ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
