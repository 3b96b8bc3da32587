"""The report of one run that a recipe writes (the demos): its summary table, held-out pairwise accuracy before and
after, its training curves, the recipe's own sections, and generations before and after; as ``report.md`` and
``report.html`` (``blocks.write_report``) with the curves as PNGs next to them."""

from __future__ import annotations

from pathlib import Path

from alignkit.data.jsonl import read_jsonl
from alignkit.eval.report.blocks import Heading, Image, Table, Text, write_report
from alignkit.eval.report.figures import PLOTS, curve_figures
from alignkit.eval.report.values import fmt, rate


def write_run_report(
    out_dir: Path,
    title: str,
    summary: dict,
    pairwise: dict | None,
    generations: list[dict],
    plots: dict = PLOTS,
    notes: list[str] = (),
    sections: list = (),
) -> Path:
    """``report.md`` (and ``report.html``) in ``out_dir``, which holds the run's ``metrics.jsonl``; returns the
    Markdown's path. ``generations``: dicts with prompt, before, after; ``plots``: the curves to draw
    (``figures.PLOTS`` or ``figures.RL_PLOTS``); ``sections``: more blocks after the run table."""
    out_dir = Path(out_dir)
    rows = read_jsonl(out_dir / "metrics.jsonl") if (out_dir / "metrics.jsonl").is_file() else []
    blocks: list = [Heading(title, 1), *(Text(n, "note") for n in notes)]
    blocks += [Heading("Run"), Table(["", "value"], [[k, fmt(v)] for k, v in summary.items()])]
    blocks += list(sections)
    if pairwise:
        blocks += pairwise_blocks(pairwise)
    curves = curve_figures([("run", rows)], plots)
    if curves:
        blocks += [Heading("Training curves"), *(Image(name, title, png) for name, title, png in curves)]
    if generations:
        blocks += [
            Heading("Generations before and after (greedy)"),
            Table(["prompt", "before", "after"], [[g["prompt"], g["before"], g["after"]] for g in generations],
                  text_columns=(0, 1, 2)),
        ]  # fmt: skip
    return write_report(out_dir, blocks, title)["md"]


def pairwise_blocks(pairwise: dict) -> list:
    """Held-out pairwise accuracy before and after training (``eval.pairwise.pairwise_report``)."""
    p = pairwise
    return [
        Heading("Held-out pairwise accuracy"),
        Text(
            f"{p['pairs']} held-out pairs. Mean log-prob accuracy: share of pairs where the model gives the chosen "
            "completion a higher mean per-token log-prob than the rejected one. Implicit reward accuracy: share "
            "where beta*log(pi/pi_ref) is higher for chosen (pi_ref = the model before training)."
        ),
        Table(
            ["metric", "before", "after"],
            [
                ["mean log-prob accuracy", rate(p["mean_logp_accuracy_before"]), rate(p["mean_logp_accuracy_after"])],
                ["implicit reward accuracy", "-", rate(p["implicit_reward_accuracy_after"])],
                ["mean log-prob, chosen", rate(p["mean_logp_chosen_before"]), rate(p["mean_logp_chosen_after"])],
                ["mean log-prob, rejected", rate(p["mean_logp_rejected_before"]), rate(p["mean_logp_rejected_after"])],
            ],
        ),
    ]  # fmt: skip
