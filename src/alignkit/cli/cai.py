"""``alignkit cai``: Constitutional AI. ``revise``: critique-and-revision SFT data from red-team prompts; ``label``:
AI preference pairs (RLAIF) under the constitution. Settings come from ``--config`` YAML (configs/cai_*.yaml), then
``--set field=value``, then the options given on the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

cai_app = typer.Typer(
    no_args_is_help=True, help="Constitutional AI: critique-and-revision SFT data, AI preference labels (RLAIF)."
)

CONFIG_HELP = "YAML of the command's fields (configs/cai_revise.yaml, configs/cai_label.yaml)"
SET_HELP = "Override a field: --set rounds=2 (repeatable)"
PROMPTS_HELP = "Prompt records (.jsonl/.json/.parquet/.csv, builtin:NAME); default the shipped red-team set"
CONSTITUTION_HELP = "A constitution YAML (principles: [{name, critique, revision, comparison}]); default shipped"


def _settings(cls, config: Optional[Path], sets: List[str], **given):
    """``cls`` from the YAML file and ``--set`` overrides, then the options given (not None), validated."""
    from alignkit.config import load_config

    cfg = load_config(cls, str(config) if config else None, sets)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None and v != []})
    cfg.validate()
    return cfg


@cai_app.command("revise")
def cai_revise(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model dir, hub id; default the embedded one"),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p", help=PROMPTS_HELP),
    prompt_field: Optional[str] = typer.Option(None, help="The field holding the prompt (default prompt)"),
    limit: Optional[int] = typer.Option(None, help="Use N prompts, round-robin over categories"),
    rounds: Optional[int] = typer.Option(None, help="Critique-revision rounds (default 1), a new principle each"),
    constitution: Optional[str] = typer.Option(None, help=CONSTITUTION_HELP),
    principle: List[str] = typer.Option([], "--principle", help="Use only this principle (repeatable)"),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens per response and revision (default 128)"),
    critique_tokens: Optional[int] = typer.Option(None, help="Tokens per critique (default 96)"),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default); > 0 samples, seeded"),
    few_shot: Optional[bool] = typer.Option(None, "--few-shot/--no-few-shot", help="Show worked examples (default on)"),
    drop_truncated: Optional[bool] = typer.Option(
        None, "--drop-truncated/--keep-truncated", help="Filter revisions cut off at max_new_tokens (default keep)"
    ),
    seed: Optional[int] = typer.Option(None, help="Seed of principle choice and sampling (default 0)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="SFT records (default runs/cai/revisions.jsonl)"),
    chains: Optional[Path] = typer.Option(None, help="Whole chains (default OUT.chains.jsonl)"),
    summary: Optional[Path] = typer.Option(None, help="Summary JSON (default OUT.summary.json)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps"),
):
    """Red-team prompts -> response -> critique -> revision (R rounds) -> SFT data for alignkit train sft."""
    from alignkit.cai.revise import ReviseConfig, describe_revise, run_revise

    cfg = _settings(
        ReviseConfig, config, set_, model=model, prompts=prompts, prompt_field=prompt_field, limit=limit,
        rounds=rounds, constitution=constitution, principles=principle, max_new_tokens=max_new_tokens,
        critique_tokens=critique_tokens, temperature=temperature, few_shot=few_shot, drop_truncated=drop_truncated,
        seed=seed, out=_str(out), chains=_str(chains), summary=_str(summary), device=device,
        overwrite=overwrite or None,
    )  # fmt: skip
    typer.echo("\n".join(describe_revise(run_revise(cfg, log=typer.echo))))


@cai_app.command("label")
def cai_label(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    policy: Optional[str] = typer.Option(None, "--policy", "-m", help="Model dir, hub id; default the embedded one"),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p", help=PROMPTS_HELP),
    prompt_field: Optional[str] = typer.Option(None, help="The field holding the prompt (default prompt)"),
    limit: Optional[int] = typer.Option(None, help="Use N prompts, round-robin over categories"),
    samples: Optional[int] = typer.Option(None, "--samples", "-k", help="Responses per prompt, >= 2 (default 2)"),
    pairing: Optional[str] = typer.Option(None, help="best_worst (default: one pair per prompt) or all"),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature, > 0 (default 1.0)"),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens per response (default 128)"),
    judge: Optional[str] = typer.Option(
        None, "--judge", "-j", help="reward_model:DIR, verifier:math or llm:MODEL (default llm:smollm2-135m-instruct)"
    ),
    constitution: Optional[str] = typer.Option(None, help=CONSTITUTION_HELP),
    principle: List[str] = typer.Option([], "--principle", help="Use only this principle (repeatable)"),
    inconsistent: Optional[str] = typer.Option(None, help="Orders disagree: tie (default) or drop"),
    seed: Optional[int] = typer.Option(None, help="Seed of sampling and principle choice (default 0)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Pairs (default runs/cai/preferences.jsonl)"),
    summary: Optional[Path] = typer.Option(None, help="Summary JSON (default OUT.summary.json)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps"),
):
    """Prompts -> K responses -> a judge picks chosen/rejected under a sampled principle -> pairs for train dpo/rm."""
    from alignkit.cai.label import LabelConfig, describe_label, run_label

    cfg = _settings(
        LabelConfig, config, set_, policy=policy, prompts=prompts, prompt_field=prompt_field, limit=limit,
        samples=samples, pairing=pairing, temperature=temperature, max_new_tokens=max_new_tokens, judge=judge,
        constitution=constitution, principles=principle, inconsistent=inconsistent, seed=seed, out=_str(out),
        summary=_str(summary), device=device, overwrite=overwrite or None,
    )  # fmt: skip
    typer.echo("\n".join(describe_label(run_label(cfg, log=typer.echo))))


def _str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def register(app: typer.Typer) -> None:
    app.add_typer(cai_app, name="cai")
