"""``alignkit eval human``: export anonymized A/B pairs for annotators, import their labels as a win rate."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from alignkit.cli.helpers import check_outputs, read_input

human_app = typer.Typer(
    no_args_is_help=True,
    help="Human A/B evaluation: export a CSV of anonymized, randomized pairs plus a key; import the filled labels.",
)


@human_app.command("export")
def human_export(
    a: str = typer.Option(..., "--a", help="Responses of policy A: records with prompt, response[, category]"),
    b: str = typer.Option(..., "--b", help="Responses of policy B to the same prompts"),
    out: Path = typer.Option(..., "--out", "-o", help="The CSV for annotators (.csv)"),
    key: Path = typer.Option(..., "--key", help="The key saying which response is A (.json); keep it from annotators"),
    seed: int = typer.Option(0, help="Seed for the row order, the item ids and the sides"),
    a_name: Optional[str] = typer.Option(None, help="Name of A in the key and the report (default: its file name)"),
    b_name: Optional[str] = typer.Option(None, help="Name of B in the key and the report (default: its file name)"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key (its annotations become unreadable)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out CSV"),
):
    """Write the pairs in a random order, each with an opaque id and a random side for A, and a separate key."""
    from alignkit.errors import UserError
    from alignkit.eval.human import INSTRUCTIONS, export_pairs
    from alignkit.eval.judged import match_responses

    if out.resolve() == key.resolve():
        raise UserError(f"--key {key} is also --out. Fix: write the key to its own file, e.g. key.json")
    if key.exists() and not force:
        raise UserError(f"--key {key} exists; overwriting it loses the key to the CSVs exported with it. Fix: choose "
                        "another --key, or pass --force")  # fmt: skip
    check_outputs(("--key", key), overwrite=force, inputs=[a, b])
    matched = match_responses(read_input(a, out, overwrite=overwrite), read_input(b, out, overwrite=overwrite))
    names = a_name or Path(a).name, b_name or Path(b).name
    csv_path, key_path = export_pairs(matched, out, key, seed, *names)
    typer.echo(f"wrote {len(matched.prompts)} pairs to {csv_path} (for annotators) and the key to {key_path} "
               "(keep it from them)")  # fmt: skip
    typer.echo(f"instructions for annotators: {INSTRUCTIONS}")
    typer.echo(f"then: alignkit eval human import {csv_path.name} [more annotators' CSVs] --key {key_path}")


@human_app.command("import")
def human_import(
    labels: List[Path] = typer.Argument(..., metavar="LABELS.csv...", help="Filled-in CSVs, one per annotator"),
    key: Path = typer.Option(..., "--key", help="The key written by the export"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write one judged record per item (.jsonl)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON"),
    seed: int = typer.Option(0, help="Bootstrap seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist"),
):
    """Map the labels back to A and B through the key; report the win rate, agreement and position bias."""
    from alignkit.data.jsonl import write_jsonl
    from alignkit.errors import UserError
    from alignkit.eval.human import describe_human, import_labels
    from alignkit.outputs import write_json_atomic

    outputs = [p for p in (out, json_out) if p is not None]
    check_outputs(*[o for o in (out, ("--json", json_out)) if o and (o[1] if isinstance(o, tuple) else o)],
                  overwrite=overwrite, inputs=[*labels, key])  # fmt: skip
    if len(outputs) == 2 and out.resolve() == json_out.resolve():
        raise UserError(f"--out and --json are both {out}. Fix: give two file names")
    result = import_labels(labels, key, seed=seed)
    typer.echo("\n".join(describe_human(result)))
    if out:
        typer.echo(f"wrote {write_jsonl(out, result.rows)}")
    if json_out:
        summary = {"kind": "winrate", "a": result.a, "b": result.b, "judge": "human", "n": result.win.n,
                   **dataclasses.asdict(result.win)}  # fmt: skip
        summary["human"] = {"annotators": result.annotators, "items": result.items, "unlabeled": result.unlabeled,
                            "blank": result.blank, "both_bad": result.both_bad,
                            "disagreements": result.disagreements, "agreement": result.agreement,
                            "kappa": result.kappa, "position_1": result.position_1,
                            "decisive_labels": result.decisive_labels}  # fmt: skip
        try:
            write_json_atomic(json_out, summary)
        except OSError as e:
            raise UserError(f"--json {json_out}: cannot be written ({e}). Fix: choose a writable file path") from None
        typer.echo(f"wrote {json_out}")
