"""``alignkit eval safety``: refusal rate on harmful prompts and over-refusal rate on benign-but-edgy ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from alignkit.cli.helpers import check_outputs

DEFAULT_MODEL = "smollm2-135m-instruct"


def eval_safety(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=f"Model dir, LoRA adapter dir, hub id; default {DEFAULT_MODEL} (embedded)"
    ),
    responses: Optional[str] = typer.Option(
        None, "--responses", help="Judge these responses instead: records with prompt + response (a review CSV too)"
    ),
    prompts: Optional[str] = typer.Option(
        None, "--prompts", help="Safety set: JSONL of {prompt, kind: harmful|benign, category}; default the shipped one"
    ),
    max_new_tokens: int = typer.Option(128, min=1, help="Tokens to generate per response (greedy)"),
    limit: Optional[int] = typer.Option(None, help="Evaluate N prompts, spread evenly over kinds and categories"),
    reward_model: Optional[str] = typer.Option(
        None, "--reward-model", "-r", help="Also judge with a reward model: harmful answers are safe if refused or >= t"
    ),
    threshold: float = typer.Option(0.0, help="Reward at or above which a response is acceptable (--reward-model)"),
    review_out: Optional[Path] = typer.Option(None, "--review-out", help="Write a manual-review sheet here (.csv)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report here (.json)"),
    seed: int = typer.Option(0, help="Sampling seed (greedy decoding does not depend on it)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist"),
):
    """Refusal rate on harmful prompts (want high) and over-refusal on benign-but-edgy ones (want low), per category,
    judged by the rule set in alignkit.eval.safety (and a reward model when given)."""
    from alignkit.errors import UserError
    from alignkit.eval.safety import classify_response, load_safety_prompts, safety_report, subset, write_review_csv

    if model is not None and responses is not None:
        raise UserError("--model and --responses both given. Fix: generate with --model or judge --responses, not both")
    inputs = [Path(p) for p in (prompts, responses) if p and not p.startswith("builtin:")]
    check_outputs(*[o for o in (out, ("--review-out", review_out)) if o and (o[1] if isinstance(o, tuple) else o)],
                  overwrite=overwrite, inputs=inputs)  # fmt: skip
    records = subset(load_safety_prompts(prompts), limit)
    if responses is not None:
        texts = _read_responses(responses, records)
        source = responses
    else:
        model = model or DEFAULT_MODEL
        texts = _generate(model, [r["prompt"] for r in records], max_new_tokens, seed, device)
        source = f"{model} (greedy, max {max_new_tokens} new tokens)"
    scores = None
    if reward_model is not None:
        from alignkit.reward_model import RewardModel

        rm = RewardModel.load(reward_model, device=device)
        scores = rm.reward([r["prompt"] for r in records], texts)[0].tolist()
    verdicts = [classify_response(t) for t in texts]
    report = safety_report(records, texts, verdicts, "rules", scores, threshold, f"reward model {reward_model}")
    typer.echo(f"{source} on {prompts or 'the shipped safety set'}: {len(records)} prompts")
    typer.echo("\n".join(report.lines()))
    if review_out is not None:
        typer.echo(f"wrote review sheet {write_review_csv(review_out, records, texts, verdicts, inputs)}")
    if out is not None:
        from alignkit.outputs import write_json_atomic

        typer.echo(f"wrote {write_json_atomic(out, {'kind': 'safety', 'source': source, **report.to_dict()})}")


def _read_responses(spec: str, records: list[dict]) -> list[str]:
    """The response to each record's prompt from ``spec`` (records with prompt + response), matched by prompt text."""
    from alignkit.data.readers import read_records
    from alignkit.errors import UserError
    from alignkit.eval.judged import record_prompt, record_response

    by_prompt: dict[str, tuple[str, str]] = {}
    for source, rec in read_records(spec):
        prompt = record_prompt(rec, source)
        if prompt in by_prompt:
            raise UserError(f"{source}: prompt repeats {by_prompt[prompt][0]}. Fix: one response per prompt")
        by_prompt[prompt] = (source, record_response(rec, source))
    missing = [r for r in records if r["prompt"] not in by_prompt]
    if missing:
        raise UserError(f"{spec}: no response to {len(missing)} of {len(records)} prompts, e.g. "
                        f"{json.dumps(missing[0]['prompt'][:60])} ({missing[0]['source']}). Fix: answer every prompt "
                        "of the set, e.g. with alignkit eval safety --model M --review-out FILE.csv")  # fmt: skip
    return [by_prompt[r["prompt"]][1] for r in records]


def _generate(model: str, prompts: list[str], max_new_tokens: int, seed: int, device: str) -> list[str]:
    """Greedy responses through the chat template with the batched sampler, bf16 autocast where native."""
    from alignkit.generation import load_sampler
    from alignkit.generation.sampler import SamplingParams

    SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0).validate("alignkit eval safety")
    results = load_sampler(model, device).generate(
        prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0, seed=seed
    )
    return [completions[0].text.strip() for completions in results]
