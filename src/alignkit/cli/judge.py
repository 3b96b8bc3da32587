"""``alignkit judge eval``: how well a judge (reward model, verifier, LLM) agrees with human preference labels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alignkit.cli.helpers import OVERWRITE_HELP, read_input

judge_app = typer.Typer(no_args_is_help=True, help="Judges: measure agreement with human labels and self-consistency.")

JUDGE_HELP = "reward_model:DIR, verifier:math, llm:MODEL (a local model), or a YAML/JSON file with kind and options"


@judge_app.command("eval")
def judge_eval(
    judge: str = typer.Option(..., "--judge", "-j", help=JUDGE_HELP),
    pairs: str = typer.Option(..., "--pairs", help="Human-labelled pairs: prompt, chosen, rejected (chosen preferred)"),
    limit: Optional[int] = typer.Option(None, min=1, help="Use the first N valid pairs only"),
    both_orders: bool = typer.Option(True, help="Ask an order-sensitive judge in both orders (else one, randomized)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report with one row per pair (.json)"),
    seed: int = typer.Option(0, help="Seed of the randomized order (--no-both-orders)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Agreement of a judge with the human label on preference pairs (Wilson interval), its self-consistency across
    the two orders, its position bias and how often it gives no verdict."""
    from alignkit.data import to_pairwise, validate_records
    from alignkit.errors import UserError
    from alignkit.judges import load_judge
    from alignkit.judges.quality import describe_agreement, judge_agreement

    spec = judge
    if Path(judge).suffix in (".yaml", ".yml", ".json") and Path(judge).is_file():
        import yaml

        spec = yaml.safe_load(Path(judge).read_text())
    records = read_input(pairs, *([out] if out else []), overwrite=overwrite)
    examples, problems = validate_records(records, to_pairwise, "skip")
    if problems:
        typer.echo(f"skipped {len(problems)} invalid records, e.g. {problems[0]}")
    examples = examples[:limit]
    if not examples:
        raise UserError(f"{pairs}: no valid pairs. Fix: give records with prompt, chosen and rejected")
    j = load_judge(spec, "--judge", device=device)
    try:
        result = judge_agreement(j, examples, both_orders, seed)
    finally:
        j.close()
    typer.echo("\n".join(describe_agreement(result)))
    if out:
        from alignkit.outputs import write_json_atomic

        typer.echo(f"wrote {write_json_atomic(out, {'kind': 'judge_eval', 'pairs_file': pairs, **result})}")


def register(app: typer.Typer) -> None:
    app.add_typer(judge_app, name="judge")
