"""The ``alignkit`` command: the app built from the command modules, and ``main`` (the console entry point).

Each command module (``cli/train.py``, ``cli/eval.py``, ...) defines its commands and a ``register(app)``; it never
imports this module. Adding a command group is one module plus one entry in ``COMMANDS``."""

from __future__ import annotations

import sys

import typer

from alignkit.cli import cai, data, eval, feedback, generate, judge, loop, runs, serve, train, verify
from alignkit.errors import UserError
from alignkit.models.cpu_memory import bound_onednn_caches

COMMANDS = (train, generate, runs, data, verify, eval, cai, judge, feedback, serve, loop)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Align causal language models: SFT, the DPO family, KTO, reward models, best-of-N, GRPO/RLOO and PPO.",
)
for module in COMMANDS:
    module.register(app)


def main() -> None:
    try:
        bound_onednn_caches()  # before any kernel runs (models.cpu_memory: memory on CPUs with native bf16)
        app()
    except UserError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
