"""``alignkit demo``, ``alignkit compare`` and ``alignkit report``: whole runs (the recipes) and the report of runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from alignkit.cli.helpers import SET_HELP
from alignkit.errors import UserError


def demo(
    method: str = typer.Option(
        "dpo",
        "--method",
        help="dpo (LoRA on preference pairs), grpo (math verifier), tools (GRPO with a "
        "calculator) or loop (continual alignment)",
    ),
    output_dir: Optional[str] = typer.Option(None, help="Where the report, metrics and model go (runs/demo[-grpo])"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    judge: Optional[str] = typer.Option(
        None, help="dpo: a reward model dir to judge the win rate with (default: one trained on hh-rlhf, cached)"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into an --output-dir the demo did not make (its files are replaced)"
    ),
):
    """The main job on the embedded model, with a report: DPO with LoRA on the shipped pairs, measured against the
    base by a judge trained on other data; GRPO with the math verifier on the project's arithmetic problems
    (held-out accuracy before and after); GRPO teaching the model to use a calculator, against tool-free GRPO at
    the same budget, on templates it never trained on; or the continual-alignment loop (a server, simulated users,
    retrain, staged rollout, promote or roll back; --set overrides the loop's config)."""
    if method == "dpo":
        from alignkit.recipes.demo_dpo import run_demo

        run_demo(output_dir or "runs/demo", set_, judge=judge, overwrite=overwrite)
    elif method == "grpo":
        from alignkit.recipes.demo_grpo import run_grpo_demo

        run_grpo_demo(output_dir or "runs/demo-grpo", set_, overwrite=overwrite)
    elif method == "tools":
        from alignkit.recipes.demo_tools import run_tools_demo

        run_tools_demo(output_dir or "runs/demo-tools", set_, overwrite=overwrite)
    elif method == "loop":
        from alignkit.recipes.demo_loop import run_loop_demo

        run_loop_demo(output_dir or "runs/demo-loop", set_, overwrite=overwrite)
    else:
        raise UserError(f"--method {method}: there are dpo, grpo, tools and loop demos. "
                        "Fix: --method dpo, grpo, tools or loop")  # fmt: skip


def compare(
    config: Path = typer.Option(..., "--config", "-c", help="A comparison recipe, e.g. configs/compare_hh.yaml"),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: --set eval_prompt_limit=16"),
):
    """Train SFT, DPO, KTO and PPO from one base and compare them with a held-out judge reward model: win rate vs
    SFT with intervals, judge reward, KL, length, refusal rates, training time (comparison.md / .json)."""
    from alignkit.recipes.compare import comparison_table, load_compare_config, run_compare

    cfg = load_compare_config(str(config), overrides)
    result = run_compare(cfg, log=typer.echo)
    typer.echo("\n".join(comparison_table(result)))
    typer.echo(f"wrote {Path(cfg.output_dir) / 'comparison.md'}, {Path(cfg.output_dir) / 'comparison.json'}")


def report(
    run_dirs: List[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories (metrics.jsonl, eval/)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: FIRST_RUN_DIR/report)"),
    title: Optional[str] = typer.Option(None, help="Page title (default: the run names)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --out that report did not make"),
):
    """One self-contained HTML page (inline plots, no network) and Markdown from runs, side by side: training
    curves, evaluation tables, win rates with intervals, overoptimization curves, example generations."""
    from alignkit.eval.report.page import build_report
    from alignkit.outputs import own_output_dir

    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run directory. Fix: pass directories that hold metrics.jsonl or eval/")
    out = own_output_dir(out or run_dirs[0] / "report", "report", overwrite=overwrite, inputs=run_dirs, option="--out")
    paths = build_report(run_dirs, out, title, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {paths['html']}\nwrote {paths['md']}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command()(compare)
    app.command()(report)
