"""What the command modules share: help texts, reading inputs safely, the prompts of --prompt / --prompts-file.

Never imports the app (``cli.main``) or a command module: they import this."""

from __future__ import annotations

from pathlib import Path

from alignkit.errors import UserError

SET_HELP = "Override a config field: section.field=value (repeatable), e.g. --set train.learning_rate=1e-5"
AGG_HELP = "How ensemble members combine: mean, min, percentile, mean_minus_std"
INPUT_HELP = "Records: .jsonl/.json/.parquet/.csv, a saved HF dataset, or builtin:NAME"
MODEL_HELP = "Model dir, LoRA adapter dir, hub id, or the embedded default"


OVERWRITE_HELP = "Replace outputs that already exist (without it, a command never replaces a file it did not write)"


def check_outputs(*outputs, overwrite: bool = False, inputs=()) -> None:
    """Each output (a path, or ``(option, path)``) is a new file, not an input, not a directory, unless
    ``overwrite`` (which still never lets an output replace an input). Runs before any work."""
    from alignkit.outputs import check_output_file

    for item in outputs:
        option, path = item if isinstance(item, tuple) else ("--out", item)
        check_output_file(path, overwrite=overwrite, inputs=inputs, option=option)


def read_input(spec: str, *outputs, overwrite: bool = False) -> list:
    """The records of ``spec``, after checking that the outputs may be written (``check_outputs``)."""
    from alignkit.data.readers import read_records

    check_outputs(*outputs, overwrite=overwrite, inputs=[spec])
    return read_records(spec)


def read_prompts(prompt: list[str], prompts_file: Path | None) -> list:
    """Prompts from --prompt and --prompts-file (one per line, or .jsonl/.json records with a 'prompt' field)."""
    prompts = list(prompt)
    if prompts_file:
        if not prompts_file.is_file():
            raise UserError(f"--prompts-file {prompts_file} does not exist. Fix: pass an existing file")
        if prompts_file.suffix in (".jsonl", ".json", ".gz", ".parquet", ".csv"):
            from alignkit.data import read_records, to_prompt, validate_records

            prompts += [x.prompt for x in validate_records(read_records(str(prompts_file)), to_prompt)[0]]
        else:
            prompts += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError("no prompts. Fix: pass --prompt TEXT or --prompts-file FILE")
    return prompts


def check_aggregate(aggregate: str) -> None:
    """An ensemble aggregation name the reward model knows, else a ``UserError`` naming the choices."""
    from alignkit.reward_model.aggregate import AGGREGATIONS

    if aggregate not in AGGREGATIONS:
        raise UserError(f"--aggregate {aggregate}: unknown. Fix: use one of {', '.join(AGGREGATIONS)}")


def parse_key_values(items: list[str], option: str) -> dict:
    """``KEY=VALUE`` options -> {key: value}, each value read as YAML (``true`` -> True, ``3`` -> 3, ``a b`` -> str)."""
    import yaml

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"{option} {item!r}: not KEY=VALUE. Fix: e.g. {option} demonstrations=true")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out
