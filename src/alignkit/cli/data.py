"""``alignkit data``: prepare thumbs-up/down feedback for training: clean, pairs, split."""

from __future__ import annotations

from pathlib import Path

import typer

from alignkit.cli.helpers import INPUT_HELP, OVERWRITE_HELP, read_input
from alignkit.errors import UserError

data_app = typer.Typer(no_args_is_help=True, help="Prepare thumbs-up/down feedback for training: clean, pairs, split.")


@data_app.command("clean")
def data_clean(
    input_: str = typer.Argument(..., metavar="INPUT", help=INPUT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the kept records (.jsonl)"),
    min_rate: float = typer.Option(0.1, help="Drop raters approving less often than this"),
    max_rate: float = typer.Option(0.9, help="Drop raters approving more often than this"),
    min_ratings: int = typer.Option(5, help="Judge only raters with at least this many ratings"),
    min_chars: int = typer.Option(10, help="Drop responses shorter than this many characters"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Drop biased raters, duplicate (prompt, completion) records and too-short responses; say what and why."""
    from alignkit.data.feedback import clean_feedback
    from alignkit.data.jsonl import write_jsonl

    kept, report = clean_feedback(
        read_input(input_, out, overwrite=overwrite), min_rate, max_rate, min_ratings, min_chars
    )
    typer.echo("\n".join(report.lines()))
    typer.echo(f"wrote {len(kept)} records to {write_jsonl(out, [rec for _, rec in kept])}")


@data_app.command("pairs")
def data_pairs(
    input_: str = typer.Argument(..., metavar="INPUT", help=INPUT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the prompt/chosen/rejected pairs (.jsonl)"),
    max_pairs_per_prompt: int = typer.Option(8, help="At most this many pairs per prompt (a seeded choice)"),
    seed: int = typer.Option(0, help="Seed for choosing pairs over the cap"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Pair each thumbs-up completion with each thumbs-down completion of the same prompt."""
    from alignkit.data.feedback import feedback_to_pairs
    from alignkit.data.jsonl import write_jsonl

    records = read_input(input_, out, overwrite=overwrite)
    pairs, counts = feedback_to_pairs(records, max_pairs_per_prompt, seed)
    typer.echo(
        f"{counts.prompts} prompts, {counts.prompts_with_both} with both thumbs up and down; "
        f"{counts.pairs} pairs made, {counts.dropped_by_cap} dropped by --max-pairs-per-prompt {max_pairs_per_prompt}"
    )
    typer.echo(f"wrote {len(pairs)} pairs to {write_jsonl(out, pairs)}")


@data_app.command("split")
def data_split(
    input_: str = typer.Argument(..., metavar="INPUT", help=INPUT_HELP),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Writes train.jsonl, val.jsonl and test.jsonl here"),
    fractions: str = typer.Option("0.8,0.1,0.1", help="train,val,test shares of the records; positive, sum 1"),
    seed: int = typer.Option(0, help="Seed for assigning prompts to splits"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Split records by prompt: all records of one prompt land in the same split."""
    from alignkit.data.feedback import split_by_prompt
    from alignkit.data.jsonl import write_jsonl

    try:
        shares = [float(f) for f in fractions.split(",")]
    except ValueError:
        raise UserError(f"--fractions {fractions}: not numbers. Fix: e.g. --fractions 0.8,0.1,0.1") from None
    outs = [out_dir / f"{name}.jsonl" for name in ("train", "val", "test")]
    splits = split_by_prompt(read_input(input_, *outs, overwrite=overwrite), shares, seed)
    for path, split in zip(outs, splits):
        write_jsonl(path, [rec for _, rec in split])
        typer.echo(f"{path}: {len(split)} records")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
