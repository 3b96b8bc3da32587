"""``alignkit train``, ``alignkit config`` and ``alignkit merge``: train a method from a config, print a method's
full config, merge a LoRA adapter into its base."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from alignkit.cli.helpers import SET_HELP


def train(
    method: str = typer.Argument(
        ..., help="sft, dpo, ipo, simpo, orpo, hinge, robust, kto, rm, grpo, rloo, ppo, online-dpo, online-kto, distill"
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in train.output_dir"),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this ckpt-* directory"),
):
    """Train a model with METHOD."""
    from alignkit.train import make_config, run

    cfg = make_config(method, str(config) if config else None, set_)
    try:
        result = run(method, cfg, resume=str(resume_from) if resume_from else resume)
    except KeyboardInterrupt:
        typer.echo(interrupted_hint(method, cfg), err=True)
        raise
    typer.echo(f"model: {result.model_dir}")


def interrupted_hint(method: str, cfg) -> str:
    """What a Ctrl-C left behind and how to go on from it."""
    from alignkit.train.checkpoint import list_checkpoints

    out = Path(cfg.train.output_dir)
    found = list_checkpoints(out)
    if found:
        return (f"interrupted: {out} keeps its checkpoints (latest {found[-1].name}). Continue with the same command "
                f"plus --resume (alignkit train {method} ... --resume)")  # fmt: skip
    return (f"interrupted before any checkpoint was written in {out} (train.save_steps: {cfg.train.save_steps}). "
            "Start again with train.overwrite=true, or set train.save_steps to make runs resumable")  # fmt: skip


def show_config(method: str = typer.Argument(..., help="sft, dpo, ipo, simpo, orpo, hinge, robust, kto, rm, grpo, "
                                                          "rloo, ppo, online-dpo, online-kto or distill")):  # fmt: skip
    """Print the full default config of METHOD as YAML, with every field."""
    import yaml

    from alignkit.config import to_dict
    from alignkit.train import make_config
    from alignkit.train.run import METHODS

    overrides = ["data.train=PATH/TO/DATA.jsonl"]
    if method in METHODS and hasattr(METHODS[method].config_class(), "rollout"):
        overrides.append("method.rewards=[math]")  # online methods need a reward to validate
    if method == "distill":
        overrides.append("method.teacher=PATH/TO/TEACHER")
    cfg = make_config(method, overrides=overrides)
    typer.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def merge(
    adapter: Path = typer.Argument(..., help="LoRA adapter directory (the 'model' dir of a LoRA run)"),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the merged model"),
    base: Optional[str] = typer.Option(None, help="Base model (default: the one recorded in the adapter)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it holds files merge did not write"),
):
    """Merge a LoRA adapter into its base model; the result loads with plain transformers."""
    from alignkit.models.merge import merge_adapter

    typer.echo(f"merged model: {merge_adapter(adapter, out, base, overwrite)}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("config")(show_config)
    app.command()(merge)
