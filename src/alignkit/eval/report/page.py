"""``alignkit report RUN_DIR [RUN_DIR ...]``: one self-contained HTML page and a Markdown file from runs.

The page has no scripts and loads nothing: its CSS is inline and its plots are PNGs embedded as base64 ``data:``
URLs. The Markdown has the same tables and links the same PNGs, written next to it. All text taken from the runs
(names, prompts, generations, field names) is escaped. Several runs are shown side by side: their training curves
overlaid on the same axes (labelled by run directory name) and their numbers in columns of one table.

What a run directory holds (each part optional, but at least one of ``metrics.jsonl`` and ``eval/``):

- ``metrics.jsonl`` (written by ``alignkit train``): the training curves of ``alignkit.eval.report.figures.PLOTS`` and
  ``RL_PLOTS`` that have data, and the final value of each plotted and ``eval/*`` metric;
- ``config.yaml`` (written by ``alignkit train``): method, model, LoRA rank, learning rate and batch size;
- ``eval/*.json``: one evaluation result per file, a JSON object with a ``"kind"`` field:

  - ``"winrate"``: ``{"kind": "winrate", "a": NAME, "b": NAME, "judge": TEXT, "wins": INT, "ties": INT,
    "losses": INT, "decisive_rate": X, "wilson": [LO, HI], "rate": X, "bootstrap": [LO, HI],
    "length_controlled": X | null, "per_category": {CATEGORY: {the same count and rate fields}}}``, the fields of
    ``alignkit.eval.winrate.WinRate`` (``winrate_json`` writes it). Required: a, b, wins, ties, losses, rate,
    bootstrap; a rate or bound may be null (e.g. nothing decisive: shown as "no decisive comparisons"). Drawn as
    points with their intervals as error bars around a 0.5 line (rate with the bootstrap interval, decisive rate
    with the Wilson interval, length-controlled rate as a cross), one row per comparison and category, each
    labelled by its run, A vs B and its judge (the ``judge`` field, else the file name), plus a table of rates with
    their intervals and n. Other fields (``alignkit eval human``'s agreement and kappa) get a table of their own.
  - ``"overopt"``: ``{"kind": "overopt", "points": [{"method": "bon" | "rl" | "dpo", "label": TEXT, "n": INT | null,
    "kl": X, "d": X, "gold": X, "proxy": {NAME: X}}], "fits": {"TARGET_METHOD": {"alpha": X, "beta": X,
    "d_peak": X, ...}}, "scoring": {FIELD: VALUE}}``. Each point needs a method and ``d`` or ``kl`` (d = sqrt(KL)
    when d is missing); gold and proxy values may be null. A fit's key is the target (``gold`` or a proxy name) and
    the method joined by ``_``, e.g. ``gold_bon``, ``rm-small_rl``; with alpha and beta it is drawn as the
    functional form of Gao et al. (2023): ``bon``: ``R(d) = d (alpha - beta d)``, ``rl`` and ``dpo``:
    ``R(d) = d (alpha - beta log d)``. Drawn as gold and proxy reward against d, one line per (target, method),
    plus tables of the points, the fits and the scoring fields.
  - any other kind (``"metrics"``, ``"safety"``, ``"judge_eval"``, ``"ranking"``, ...): a table of every field to
    any depth, labelled by its dotted path (``kl.k3.sequence.mean``, ``reward.win_rate.rate``), intervals on
    their estimate's row as ``0.731 [0.644, 0.812] (n=48)`` (``alignkit.eval.report.values``); files of the same
    name and kind in several runs share one table, a column per run.

- ``eval/generations.jsonl``: example generations, one record a line with a ``prompt`` (text or chat messages)
  and ``before`` / ``after`` or ``response`` texts (``alignkit generate --out`` records, with ``completions``,
  work too); the first ``MAX_GENERATIONS`` of each run are shown.

A missing run directory, or one with neither ``metrics.jsonl`` nor ``eval/``, is a ``UserError``. A file that
cannot be read (bad JSON, no ``kind``, a field of the wrong type; a bad line of a JSONL file or config.yaml) is
never fatal: it is listed under "Skipped" on the page and in the Markdown with the file and what is wrong, and the
rest of the report is complete. No number is shown as nan or inf: a missing or non-finite value is "n/a".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from alignkit.errors import UserError
from alignkit.eval.report import figures as figs
from alignkit.eval.report.blocks import Heading, Image, Table, Text, write_report
from alignkit.eval.report.runs import EvalFile, Run, collect_run, run_labels
from alignkit.eval.report.values import flatten, fmt, is_finite, rate, winrate_cell

MAX_GENERATIONS = 8
MAX_TEXT = 2000  # characters of a prompt or generation shown


def build_report(
    run_dirs: list[Path], out_dir: Path, title: str | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and its PNGs to ``out_dir``; returns {"html": path, "md": path}.
    ``log`` gets one line per skipped file."""
    if not run_dirs:
        raise UserError("no run directories given. Fix: alignkit report RUN_DIR [RUN_DIR ...]")
    runs = [collect_run(Path(p)) for p in run_dirs]
    for run, label in zip(runs, run_labels([r.path for r in runs])):
        run.label = label
    title = title or "alignkit report: " + ", ".join(r.label for r in runs)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir} is a file. Fix: give a directory for report.html, report.md and plots")
    paths = write_report(Path(out_dir), report_blocks(runs, title), title)
    for run in runs:
        for file, why in run.skipped:
            (log or (lambda _: None))(f"skipped {file}: {why}")
    return paths


def winrate_json(result, a: str, b: str, judge: str = "") -> dict:
    """The ``eval/*.json`` record of a ``WinRate`` (NaN and infinities written as null)."""

    def entry(r) -> dict:
        return {
            "wins": r.wins, "ties": r.ties, "losses": r.losses, "decisive_rate": _null(r.decisive_rate),
            "wilson": [_null(x) for x in r.wilson], "rate": _null(r.rate), "bootstrap": [_null(x) for x in r.bootstrap],
            "length_controlled": _null(r.length_controlled),
        }  # fmt: skip

    per_category = {cat: entry(r) for cat, r in result.per_category.items()}
    return {"kind": "winrate", "a": a, "b": b, "judge": judge, **entry(result), "per_category": per_category}


# ---- the report as blocks, rendered to HTML and Markdown ----


def report_blocks(runs: list[Run], title: str) -> list:
    blocks: list = [Heading(title, 1)]
    blocks.append(Text(f"{len(runs)} run(s): " + "; ".join(f"{r.label} ({r.path})" for r in runs), "note"))
    skipped = [[str(file), why] for r in runs for file, why in r.skipped]
    if skipped:
        blocks += [Heading("Skipped"), Text("These files or lines could not be read; the rest is shown.", "warn")]
        blocks.append(Table(["file", "what is wrong"], skipped))
    blocks += [Heading("Runs"), _runs_table(runs)]
    curves = figs.curve_figures([(r.label, r.rows) for r in runs if r.rows])
    if curves:
        blocks.append(Heading("Training curves"))
        blocks += [Image(name, title, png) for name, title, png in curves]
    blocks += _winrate_blocks(runs)
    blocks += _overopt_blocks(runs)
    blocks += _other_eval_blocks(runs)
    blocks += _generation_blocks(runs)
    return blocks


# ---- sections ----


def _runs_table(runs: list[Run]) -> Table:
    """Side by side: one column per run."""
    summaries = [_run_summary(r) for r in runs]
    keys = list(dict.fromkeys(k for s in summaries for k in s if k != "evaluation files")) + ["evaluation files"]
    return Table(["", *(r.label for r in runs)], [[k, *(s.get(k, "-") for s in summaries)] for k in keys])


def _run_summary(run: Run) -> dict[str, str]:
    cfg = run.config or {}
    section = lambda name: cfg.get(name) if isinstance(cfg.get(name), dict) else {}  # noqa: E731
    model, lora, train = section("model"), section("lora"), section("train")
    s = {"directory": str(run.path), "method": _method(run.config), "model": str(model.get("name", "-"))}
    s["fine-tuning"] = f"LoRA r={lora['r']}" if lora.get("r") else ("full" if run.config else "-")
    s["learning rate"] = fmt(train.get("learning_rate")) if "learning_rate" in train else "-"
    if "batch_size" in train:
        s["batch (per device x accumulation)"] = f"{train['batch_size']} x {train.get('grad_accum', 1)}"
    steps = [row["step"] for row in run.rows if isinstance(row.get("step"), int)]
    s["steps"] = str(max(steps)) if steps else "-"
    keys = ["loss"] + [k for _, _, series in figs.curve_specs() for k, _ in series]
    keys += sorted({k for row in run.rows for k in row if k.startswith("eval/")})
    for key in dict.fromkeys(keys):
        last = next((row[key] for row in reversed(run.rows) if is_finite(row.get(key))), None)
        if last is not None:
            s[f"final {key}"] = fmt(last)
    winrates = [(run, ev) for ev in run.evals if ev.kind == "winrate"]
    for (_, ev), label in zip(winrates, _winrate_labels(winrates, with_run=False)):
        s[f"win rate {label}"] = winrate_cell(ev.data, "rate")
    s["evaluation files"] = ", ".join(ev.name for ev in run.evals) or "-"
    return s


def _method(cfg: dict | None) -> str:
    """The training method, read back from a saved config.yaml (the method's own config section)."""
    if not cfg:
        return "-"
    m = cfg.get("method")
    if not m:
        return "sft"
    if not isinstance(m, dict):
        return "?"
    if "loss" in m:
        return str(m["loss"])  # the DPO family
    if "advantage" in m:
        return str(m["advantage"] or "grpo")  # grpo, rloo, reinforce_pp
    if "vf_coef" in m:
        return "ppo"
    if "desirable_weight" in m:
        return "kto"
    if "heads" in m:
        return "rm"
    return "?"


def _winrate_blocks(runs: list[Run]) -> list:
    entries = [(run, ev) for run in runs for ev in run.evals if ev.kind == "winrate"]
    if not entries:
        return []
    rows, table, others = [], [], []
    for (run, ev), label in zip(entries, _winrate_labels(entries, with_run=True)):
        d = ev.data
        parts = [(label, "all", d)] + [(f"{label}, category {c}", c, e) for c, e in d["per_category"].items()]
        for row_label, cat, e in parts:
            rows.append({**e, "label": row_label})
            table.append([run.label, ev.name, f"{d['a']} vs {d['b']}", d["judge"] or "n/a", cat, str(e["wins"]),
                          str(e["ties"]), str(e["losses"]), winrate_cell(e, "rate"), winrate_cell(e, "decisive"),
                          rate(e["length_controlled"])])  # fmt: skip
        if d["extra"]:
            others += [Heading(f"{run.label}: {ev.name}, other fields", 3),
                       Table(["field", "value"], [list(r) for r in flatten(d["extra"])])]  # fmt: skip
    headers = ["run", "file", "A vs B", "judge", "category", "wins", "ties", "losses",
               "win rate, ties as half [95% bootstrap]", "decisive win rate [95% Wilson]",
               "length-controlled"]  # fmt: skip
    return [
        Heading("Win rates"),
        Text(
            "Win rate of A over B; 0.5 = no preference. Ties count as half; 'decisive' leaves ties out. "
            "Intervals are 95%, n the comparisons they count.",
            "note",
        ),  # fmt: skip
        Image("winrate.png", "Win rates with 95% intervals", figs.winrate_figure(rows)),
        Table(headers, table),
        *others,
    ]


def _winrate_labels(entries: list[tuple[Run, EvalFile]], with_run: bool) -> list[str]:
    """``[RUN: ]A vs B, judge JUDGE`` of each win-rate file (the judge field, else the file name); the file name is
    added where that is not yet unique."""
    labels = []
    for run, ev in entries:
        d = ev.data
        label = f"{d['a']} vs {d['b']}, judge {d['judge'] or Path(ev.name).stem}"
        labels.append(f"{run.label}: {label}" if with_run else label)
    return [f"{label} ({ev.name})" if labels.count(label) > 1 else label for label, (_, ev) in zip(labels, entries)]


def _overopt_blocks(runs: list[Run]) -> list:
    blocks = []
    for run in runs:
        for ev in (e for e in run.evals if e.kind == "overopt"):
            d, k = ev.data, sum(isinstance(b, Image) for b in blocks) + 1
            title = ev.name if len(runs) == 1 else f"{run.label}: {ev.name}"
            proxies = sorted({name for p in d["points"] for name in p["proxy"]})
            points = [[p["method"], p["label"] or p["selector"] or "-", fmt(p["n"]), fmt(p["kl"]), fmt(p["d"]),
                       fmt(p["gold"]), *(fmt(p["proxy"].get(name)) for name in proxies)]
                      for p in d["points"]]  # fmt: skip
            blocks += [Heading(title, 3), Image(f"overopt-{k}.png", f"Gold and proxy reward vs d: {title}",
                       figs.overopt_png(d, title))]  # fmt: skip
            blocks.append(Table(["method", "label", "n", "KL", "d", "gold", *(f"proxy {n}" for n in proxies)], points))
            if d["fits"]:
                extra = list(dict.fromkeys(f for fit in d["fits"].values() for f in fit if f not in FIT_FIELDS))
                rows = []
                for key, fit in d["fits"].items():
                    target, _, method = key.partition("/")[0].rpartition("_")
                    form = {"bon": "d (alpha - beta d)", "rl": "d (alpha - beta log d)"}.get(method)
                    form = form or ("d (alpha - beta log d)" if method == "dpo" else "-")
                    rows.append([key, target or "-", method, form, *(fmt(fit.get(f)) for f in FIT_FIELDS + extra)])
                blocks.append(Table(["fit", "target", "method", "form", *FIT_FIELDS, *extra], rows))
            if d["scoring"]:
                blocks.append(Table(["scoring", "value"], [list(r) for r in flatten(d["scoring"])]))
    return [Heading("Overoptimization"), *blocks] if blocks else []


FIT_FIELDS = ["alpha", "beta", "d_peak"]


def _other_eval_blocks(runs: list[Run]) -> list:
    groups: dict[tuple[str, str], list[tuple[Run, EvalFile]]] = {}
    for run in runs:
        for ev in run.evals:
            if ev.kind not in ("winrate", "overopt"):
                groups.setdefault((ev.name, ev.kind), []).append((run, ev))
    blocks = []
    for (name, kind), members in groups.items():
        columns = [dict(flatten({k: v for k, v in ev.data.items() if k != "kind"})) for _, ev in members]
        keys = list(dict.fromkeys(k for c in columns for k in c))
        blocks += [Heading(f"{name} ({kind})", 3),
                   Table(["field", *(r.label for r, _ in members)], [[k, *(c.get(k, "-") for c in columns)]
                                                                     for k in keys])]  # fmt: skip
    return [Heading("Other evaluations"), *blocks] if blocks else []


def _generation_blocks(runs: list[Run]) -> list:
    blocks = []
    for run in (r for r in runs if r.generations):
        gens = run.generations[:MAX_GENERATIONS]
        columns = [c for c in ("before", "after", "response") if any(c in g["outputs"] for g in gens)]
        rows = [[_clip(g["prompt"]), *(_clip(g["outputs"].get(c, "-")) for c in columns)] for g in gens]
        if len(runs) > 1:
            blocks.append(Heading(run.label, 3))
        blocks.append(Table(["prompt", *columns], rows, text_columns=tuple(range(len(columns) + 1))))
        if len(run.generations) > len(gens):
            more = len(run.generations) - len(gens)
            blocks.append(Text(f"{more} more in {run.path / 'eval' / 'generations.jsonl'}", "note"))
    return [Heading("Example generations"), *blocks] if blocks else []


# ---- values ----


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"... ({len(text) - MAX_TEXT} more characters)"


def _null(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
