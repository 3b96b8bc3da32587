"""The ``alignkit`` command: train, generate, merge, demo, config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from alignkit.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Align causal language models: SFT and the DPO family (dpo, ipo, simpo, orpo, hinge, robust).",
)

SET_HELP = "Override a config field: section.field=value (repeatable), e.g. --set train.learning_rate=1e-5"


@app.command()
def train(
    method: str = typer.Argument(..., help="sft, dpo, ipo, simpo, orpo, hinge or robust"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in train.output_dir"),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this ckpt-* directory"),
):
    """Train a model with METHOD."""
    from alignkit.train import make_config, run

    cfg = make_config(method, str(config) if config else None, set_)
    result = run(method, cfg, resume=str(resume_from) if resume_from else resume)
    typer.echo(f"model: {result.model_dir}")


@app.command()
def generate(
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="A prompt (repeatable)"),
    prompts_file: Optional[Path] = typer.Option(None, help="File with one prompt per line"),
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", "-m", help="Model dir, LoRA adapter dir, hub id, or the embedded default"
    ),
    max_new_tokens: int = typer.Option(128, help="Tokens to generate per prompt"),
    temperature: float = typer.Option(0.0, help="0 = greedy decoding"),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold"),
    raw: bool = typer.Option(False, help="Send prompts as raw text instead of through the chat template"),
    seed: int = typer.Option(0, help="Sampling seed"),
):
    """Generate completions for prompts."""
    import torch

    from alignkit.generation import generate as gen
    from alignkit.models import load_model, load_tokenizer, pick_device

    prompts = list(prompt)
    if prompts_file:
        if not prompts_file.is_file():
            raise UserError(f"--prompts-file {prompts_file} does not exist")
        prompts += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError("no prompts. Fix: pass --prompt TEXT or --prompts-file FILE")
    device = pick_device("auto")
    lm = load_model(model, torch.float32, device)
    tokenizer = load_tokenizer(model)
    for p, out in zip(
        prompts, gen(lm, tokenizer, prompts, max_new_tokens, temperature, top_p, seed=seed, chat=not raw)
    ):
        typer.echo(f">>> {p}\n{out}\n")


@app.command()
def merge(
    adapter: Path = typer.Argument(..., help="LoRA adapter directory (the 'model' dir of a LoRA run)"),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the merged model"),
    base: Optional[str] = typer.Option(None, help="Base model (default: the one recorded in the adapter)"),
):
    """Merge a LoRA adapter into its base model; the result loads with plain transformers."""
    from alignkit.models.merge import merge_adapter

    typer.echo(f"merged model: {merge_adapter(adapter, out, base)}")


@app.command()
def demo(
    output_dir: str = typer.Option("runs/demo", help="Where the report, metrics and adapter go"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
):
    """The main job: DPO with LoRA on the embedded model and the shipped pairs; writes report.md."""
    from alignkit.demo import run_demo

    run_demo(output_dir, set_)


@app.command("config")
def show_config(method: str = typer.Argument(..., help="sft, dpo, ipo, simpo, orpo, hinge or robust")):
    """Print the full default config of METHOD as YAML, with every field."""
    import yaml

    from alignkit.config import to_dict
    from alignkit.train import make_config

    cfg = make_config(method, overrides=["data.train=PATH/TO/DATA.jsonl"])
    typer.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def main() -> None:
    try:
        app()
    except UserError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
