"""``alignkit loop run`` (the continual-alignment loop next to running servers) and ``alignkit loop status`` (its
recorded decisions)."""

from __future__ import annotations

import logging
from typing import List, Optional

import typer

from alignkit.cli.helpers import SET_HELP

loop_app = typer.Typer(no_args_is_help=True, help="The continual-alignment loop: retrain, stage, promote or roll back")


@loop_app.command("run")
def run(
    config: str = typer.Option(..., "--config", "-c", help="The loop's YAML, e.g. configs/loop.yaml"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
):
    """Watch the store; when enough new feedback arrived, retrain, gate the new model against the serving one,
    deploy it at the first stage and move it stage by stage on its own traffic; roll back when it is worse or a
    detector alarms. Every decision is recorded in the store; a restart resumes where the loop was."""
    from alignkit.recipes.loop import Loop, check_ready, load_loop_config
    from alignkit.serve.store import Store

    cfg = load_loop_config(config, set_)
    check_ready(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with Store(cfg.db) as store:
        loop = Loop(cfg, store)
        state = loop.state()
        typer.echo(f"alignkit loop '{cfg.name}': champion {state.champion}, phase {state.phase}"
                   + (f", candidate {state.candidate} at {state.share:.0%}" if state.candidate else "")
                   + f"; servers {', '.join(cfg.servers)}; store {store.where}")  # fmt: skip
        loop.run()


@loop_app.command("status")
def status(
    db: Optional[str] = typer.Option(None, help="The store (default runs/serve/alignkit.sqlite)"),
    name: Optional[str] = typer.Option(None, "--name", help="Only this loop's events"),
    last: int = typer.Option(20, min=1, help="Show the newest N events"),
):
    """The loop's recorded decisions, newest last: what it did, to which candidate, at which share, and why."""
    from alignkit.serve.store import DEFAULT_DB, Store

    with Store(db or DEFAULT_DB) as store:
        events = store.rollout_events(name, last=last)
    if not events:
        typer.echo("no rollout events recorded yet")
        return
    for e in events:
        share = f"{e['share']:.0%}" if e["share"] is not None else "-"
        typer.echo(f"{e['id']:>5} {_time(e['created'])} {e['loop']:<8} {e['action']:<15} champion {e['champion']} "
                   f"candidate {e['candidate'] or '-'} share {share}: {e['reason']}")  # fmt: skip


def _time(t: float) -> str:
    from alignkit.serve.stats import format_time

    return format_time(t)


def register(app: typer.Typer) -> None:
    app.add_typer(loop_app, name="loop")
