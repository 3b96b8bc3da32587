"""``alignkit feedback``: what the served feedback says. ``stats``: thumbs-up rates per variant with intervals,
comparison win rates, the A/B decision and the failure detectors; ``export``: training files (kto, pairs, sft)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

feedback_app = typer.Typer(
    no_args_is_help=True,
    help="The feedback collected by alignkit serve: statistics and the A/B decision, export to training data.",
)

DB_HELP = "The store: a SQLite file, sqlite:///PATH or postgresql+psycopg://... (default runs/serve/alignkit.sqlite)"
TIME_HELP = "unix seconds, an ISO time (UTC unless it has an offset) or a duration ago (24h, 7d)"


def _open_store(db: Optional[str]):
    """The store at ``db`` (default ``DEFAULT_DB``); a SQLite file that does not exist is an error, not created."""
    from alignkit.errors import UserError
    from alignkit.serve.store import DEFAULT_DB, Store

    url = db or str(DEFAULT_DB)
    path = None
    if url.startswith("sqlite:"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
    elif "://" not in url:
        path = url
    if path is not None and (not path or path == ":memory:" or not Path(path).is_file()):
        where = f"{path} does not exist" if path and path != ":memory:" else "names no database file"
        raise UserError(f"--db {url}: {where}. Fix: pass the database alignkit serve writes to (--db of alignkit "
                        f"serve; default {DEFAULT_DB}), run from the directory it was started in, or start "
                        "alignkit serve first")  # fmt: skip
    return Store(url)


def _window(since: Optional[str], until: Optional[str]) -> tuple[float | None, float | None]:
    from alignkit.errors import UserError
    from alignkit.serve.stats import format_time, parse_time

    start = parse_time(since, "--since") if since is not None else None
    end = parse_time(until, "--until") if until is not None else None
    if start is not None and end is not None and end <= start:
        raise UserError(f"--until {until} ({format_time(end)}) is not after --since {since} ({format_time(start)}). "
                        "Fix: swap them or widen the range")  # fmt: skip
    return start, end


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=150)


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _ci(interval, spec: str = ".3f") -> str:
    return "-" if not interval else f"[{interval[0]:{spec}}, {interval[1]:{spec}}]"


def _variant_table(title: str, rows: list[tuple[str, dict]], with_window: bool):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in (["window"] if with_window else []) + ["variant", "responses", "flagged", "mean tokens", "up", "down",
                                                       "up rate", "95% Wilson CI"]:  # fmt: skip
        table.add_column(name, justify="left" if name in ("window", "variant") else "right")
    for window, s in rows:
        table.add_row(*([window] if with_window else []), s["variant"], str(s["responses"]), str(s["flagged"]),
                      _fmt(s["mean_completion_tokens"], ".1f"), str(s["up"]), str(s["down"]), _fmt(s["up_rate"]),
                      _ci(s["interval"]))  # fmt: skip
    return table


def print_summary(summary: dict, console) -> None:
    """The ``feedback stats`` tables and sentences of a ``stats.summarize`` result."""
    from rich.table import Table

    from alignkit.serve.stats import format_duration, format_time

    c = summary["counts"]
    since, until = summary["since"], summary["until"]
    span = " ".join(([f"from {format_time(since)}"] if since is not None else [])
                    + ([f"until {format_time(until)}"] if until is not None else [])) or "all times"  # fmt: skip
    replaced = f" ({c['feedback_replaced']} replaced by the rater's later rating)" if c["feedback_replaced"] else ""
    console.print(f"{c['responses']} responses, {c['feedback']} ratings{replaced}, {c['comparisons']} comparisons "
                  f"({c['votes']} voted); {span}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    console.print(_variant_table("per variant", [("", s) for s in summary["variants"]], False))
    if summary["window"]:
        rows = [(format_time(w["start"]), s) for w in summary["windows"] for s in w["variants"]]
        console.print(_variant_table(f"per {format_duration(summary['window'])} window", rows, True))
    if summary["comparisons"]:
        table = Table(title="comparisons (A vs B)", title_justify="left", caption=summary["comparison_interval"],
                      caption_justify="left")  # fmt: skip
        for name in ("A", "B", "votes", "A wins", "B wins", "ties", "both bad", "A win rate", "95% CI",
                     "A decisive rate", "left share"):  # fmt: skip
            table.add_column(name, justify="left" if name in ("A", "B") else "right")
        for p in summary["comparisons"]:
            table.add_row(p["a"], p["b"], str(p["votes"]), str(p["wins_a"]), str(p["wins_b"]), str(p["ties"]),
                          str(p["both_bad"]), _fmt(p["win_rate_a"]), _ci(p["interval"]), _fmt(p["decisive_rate_a"]),
                          _fmt(p["left_share"], ".2f"))  # fmt: skip
        console.print(table)
    if summary["baseline"] is None:
        console.print("decision: no data yet", highlight=False, soft_wrap=True)
    elif not summary["decisions"]:
        console.print(
            f"decision: only one variant ({summary['baseline']}); nothing to compare", highlight=False, soft_wrap=True
        )
    else:
        console.print(f"baseline {summary['baseline']} ({summary['baseline_chosen_by']}; set it with --baseline)",
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        for d in summary["decisions"]:
            console.print(f"decision: {d['sentence']}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title="failure detectors (all traffic)", title_justify="left")
    for name in ("detector", "alarm", "value", "baseline", "limit", "n", "reason"):
        table.add_column(name, justify="right" if name in ("value", "baseline", "limit", "n") else "left")
    for name, s in summary["monitor"]["all"].items():
        table.add_row(name, "ALARM" if s["alarm"] else "ok", _fmt(s["value"]), _fmt(s["baseline"]), _fmt(s["limit"]),
                      str(s["n"]), s["reason"])  # fmt: skip
    console.print(table)
    for variant, state in summary["monitor"]["variants"].items():
        for name, s in state.items():
            if s["alarm"]:
                console.print(
                    f"variant {variant}: ALARM {name}: {s['reason']}", markup=False, highlight=False, soft_wrap=True
                )


@feedback_app.command("stats")
def feedback_stats(
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    since: Optional[str] = typer.Option(None, "--since", help=f"From this time: {TIME_HELP}"),
    until: Optional[str] = typer.Option(None, "--until", help=f"Up to this time (excluded): {TIME_HELP}"),
    window: Optional[str] = typer.Option(None, "--window", help="Also per time window of this size: 1h, 1d, 30m"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="The baseline variant (default: most responses)"),
    margin: float = typer.Option(0.05, "--margin", help="Promote when ahead by at least this thumbs-up rate"),
    min_n: int = typer.Option(100, "--min-n", help="Ratings each variant needs before a decision"),
    monitor_window: int = typer.Option(200, "--monitor-window", help="Failure detectors: recent responses/ratings"),
    monitor_baseline: int = typer.Option(1000, "--monitor-baseline", help="Failure detectors: older ones compared"),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON instead of tables"),
):
    """Thumbs-up rate per variant (and per window) with 95% Wilson intervals, comparison win rates, the A/B decision
    (promote / keep collecting / roll back) and the failure detectors over the selected traffic."""
    from alignkit.errors import UserError
    from alignkit.serve.stats import check_decision_options, parse_duration, summarize

    check_decision_options(margin, min_n)
    if monitor_window < 1 or monitor_baseline < 1:
        raise UserError(f"--monitor-window {monitor_window}, --monitor-baseline {monitor_baseline}: each must be at "
                        "least 1. Fix: e.g. --monitor-window 200 --monitor-baseline 1000")  # fmt: skip
    size = parse_duration(window, "--window") if window is not None else None
    start, end = _window(since, until)
    store = _open_store(db)
    try:
        responses, feedback = store.responses(start, end), store.feedback(start, end)
        comparisons = store.comparisons(start, end, voted_only=False)
        rollout = store.rollout_events(last=10)
    finally:
        store.close()
    options = {"window": monitor_window, "baseline": monitor_baseline, "min_samples": min(30, monitor_window)}
    summary = summarize(responses, feedback, comparisons, since=start, until=end, window=size, baseline=baseline,
                        margin=margin, min_n=min_n, monitor=options)  # fmt: skip
    summary["rollout"] = rollout  # the latest decisions of `alignkit loop`, if one runs
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
    else:
        print_summary(summary, _console())
        _print_rollout(rollout, _console())


def _print_rollout(events: list[dict], console) -> None:
    """The newest decisions of `alignkit loop` (what, to which candidate, at which share, why)."""
    if not events:
        return
    from rich.table import Table

    from alignkit.serve.stats import format_time

    table = Table(title="rollout decisions (alignkit loop), newest last", title_justify="left")
    for name in ("at", "loop", "action", "candidate", "share", "why"):
        table.add_column(name)
    for e in events:
        share = f"{e['share']:.0%}" if e["share"] is not None else "-"
        table.add_row(format_time(e["created"]), e["loop"], e["action"], e["candidate"] or "-", share, e["reason"])
    console.print(table)


@feedback_app.command("export")
def feedback_export(
    fmt: str = typer.Option(..., "--format", "-f", help="kto (thumbs), pairs (thumbs + comparison votes) or sft"),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the records (.jsonl)"),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    since: Optional[str] = typer.Option(None, "--since", help=f"Feedback from this time: {TIME_HELP}"),
    until: Optional[str] = typer.Option(None, "--until", help=f"Feedback up to this time (excluded): {TIME_HELP}"),
    min_rate: float = typer.Option(0.1, help="Drop raters approving less often than this"),
    max_rate: float = typer.Option(0.9, help="Drop raters approving more often than this"),
    min_ratings: int = typer.Option(5, help="Judge only raters with at least this many ratings"),
    min_chars: int = typer.Option(10, help="Drop responses shorter than this many characters"),
    max_pairs_per_prompt: int = typer.Option(8, help="pairs: at most this many thumbs pairs per prompt"),
    seed: int = typer.Option(0, help="pairs: seed for choosing thumbs pairs over the cap"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it exists"),
):
    """Feedback -> training data the trainers read unchanged: kto (prompt/completion/label), pairs
    (prompt/chosen/rejected) or sft (messages); cleaned (biased raters, duplicates, short answers), with counts."""
    from alignkit.errors import UserError
    from alignkit.serve.export import FORMATS, export_feedback

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: unknown. Fix: use one of {', '.join(FORMATS)}")
    from alignkit.outputs import check_output_file

    check_output_file(out, overwrite=overwrite, inputs=[db] if db else [])
    if max_pairs_per_prompt < 1:
        raise UserError(f"--max-pairs-per-prompt {max_pairs_per_prompt}. Fix: use 1 or more, e.g. 8")
    if min_ratings < 1 or min_chars < 0:
        raise UserError(f"--min-ratings {min_ratings}, --min-chars {min_chars}. Fix: --min-ratings 1 or more, "
                        "--min-chars 0 or more")  # fmt: skip
    start, end = _window(since, until)
    store = _open_store(db)
    try:
        report = export_feedback(store, fmt, out, start, end, max_pairs_per_prompt, seed, min_rate=min_rate,
                                 max_rate=max_rate, min_ratings=min_ratings, min_chars=min_chars)  # fmt: skip
    finally:
        store.close()
    typer.echo("\n".join(report.lines()))


def register(app: typer.Typer) -> None:
    app.add_typer(feedback_app, name="feedback")
