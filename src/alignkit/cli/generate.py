"""``alignkit generate``, ``alignkit score`` and ``alignkit best-of-n``: a model answers prompts; a reward model scores
responses, or picks the best of N samples."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from alignkit.cli.helpers import AGG_HELP, OVERWRITE_HELP, check_aggregate, check_outputs, read_input, read_prompts
from alignkit.errors import UserError


def generate(
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="A prompt (repeatable)"),
    prompts_file: Optional[Path] = typer.Option(None, help="File with one prompt per line, or .jsonl with 'prompt'"),
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", "-m", help="Model dir, LoRA adapter dir, hub id, or the embedded default"
    ),
    max_new_tokens: int = typer.Option(128, help="Tokens to generate per completion"),
    temperature: float = typer.Option(0.0, help="0 = greedy decoding"),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold in (0, 1]; 1 = off"),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens; 0 = off"),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens below min_p x the top token's probability; 0 = off"),
    n: int = typer.Option(1, "--n", "-n", help="Completions per prompt (> 1 needs --temperature > 0)"),
    stop: List[str] = typer.Option([], "--stop", help="Stop at this string, cut from the text (repeatable)"),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write one JSON record per prompt (prompt, completions) to this .jsonl instead"
    ),
    max_rows: int = typer.Option(64, "--max-rows", help="Rows decoded together (prompts x n)"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 autocast where native), fp32 or bf16"),
    raw: bool = typer.Option(False, help="Send prompts as raw text instead of through the chat template"),
    seed: int = typer.Option(0, help="Sampling seed (prompt i samples with seed + i)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Generate completions for prompts with the batched KV-cache sampler."""
    import time

    import torch

    from alignkit.generation import SamplingParams, load_sampler
    from alignkit.models import pick_device

    params = SamplingParams(
        n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        stop=tuple(stop),
    )  # fmt: skip
    params.validate("alignkit generate")
    if n > 1 and temperature == 0:
        raise UserError(f"--n {n} with --temperature 0 gives {n} identical greedy completions. "
                        "Fix: use --temperature > 0 (e.g. 1.0) or --n 1")  # fmt: skip
    if max_rows < 1:
        raise UserError(f"--max-rows {max_rows}. Fix: decode at least 1 row at a time, e.g. --max-rows 64")
    if dtype not in ("auto", "fp32", "bf16"):
        raise UserError(f"--dtype {dtype}: unknown. Fix: use auto, fp32 or bf16")
    check_outputs(*([out] if out else []), overwrite=overwrite, inputs=[prompts_file] if prompts_file else [])
    prompts = read_prompts(prompt, prompts_file)
    device = pick_device("auto")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bf16: this GPU does not support bf16. Fix: use --dtype auto or fp32")
    ready = load_sampler(model, str(device), dtype, max_rows)
    t0 = time.perf_counter()
    results = ready.generate(prompts, params, seed=seed, chat=not raw)
    seconds = time.perf_counter() - t0
    if out is not None:
        from alignkit.data.jsonl import write_jsonl

        records = [
            {"prompt": p if isinstance(p, str) else [dict(m) for m in p], "completions": [
                {"text": c.text, "finish_reason": c.finish_reason, "tokens": len(c.token_ids),
                 "logprob": float(sum(c.logprobs))} for c in completions]}
            for p, completions in zip(prompts, results)
        ]  # fmt: skip
        typer.echo(f"wrote {len(records)} records ({len(prompts) * n} completions) to {write_jsonl(out, records)}")
    else:
        for p, completions in zip(prompts, results):
            texts = [c.text.strip() for c in completions]
            body = texts[0] if n == 1 else "\n".join(f"[{k + 1}] {t}" for k, t in enumerate(texts))
            typer.echo(f">>> {p}\n{body}\n")
    tokens = ready.sampler.stats.tokens
    how = f"{device.type}, {'bf16 autocast' if ready.bf16 else 'fp32'}"
    typer.echo(f"{tokens} tokens in {seconds:.2f}s: {tokens / max(seconds, 1e-9):.1f} tokens/s ({how})")


def score(
    reward_model: str = typer.Argument(..., help="A reward model dir (or ensemble dir) written by alignkit train rm"),
    input_: str = typer.Option(
        ..., "--input", "-i", help="Records: prompt + response, messages, or prompt/chosen/rejected"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the scored records (.jsonl)"),
    aggregate: str = typer.Option("mean", help=AGG_HELP),
    alpha: float = typer.Option(1.0, help="mean_minus_std: reward = mean - alpha * std over members"),
    percentile: float = typer.Option(10.0, help="percentile: which percentile of the members' rewards"),
    batch_size: int = typer.Option(8, help="Sequences per forward"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Score (prompt, response) records with a saved reward model or ensemble (normalized rewards)."""
    from alignkit.data.jsonl import write_jsonl
    from alignkit.reward_model import RewardModel
    from alignkit.reward_model.scoring import check_scorable, score_records

    check_aggregate(aggregate)
    records = read_input(input_, out, overwrite=overwrite)
    check_scorable(records, input_)  # bad records fail before the model loads
    rm = RewardModel.load(reward_model)
    scored, summary = score_records(rm, records, aggregate, alpha, percentile, batch_size)
    typer.echo(f"scored {len(scored)} records with {rm.heads} reward head(s), aggregate {aggregate}")
    if summary:
        typer.echo(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    typer.echo(f"wrote {write_jsonl(out, scored)}")


def best_of_n_cmd(
    reward_model: str = typer.Option(..., "--reward", "-r", help="Reward model or ensemble dir (alignkit train rm)"),
    policy: str = typer.Option(
        "smollm2-135m-instruct", "--policy", "-m", help="Policy: model dir, LoRA adapter dir, hub id, or the default"
    ),
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="A prompt (repeatable)"),
    prompts_file: Optional[Path] = typer.Option(None, help="One prompt per line, or .jsonl records with 'prompt'"),
    n: int = typer.Option(8, "--n", "-n", help="Samples per prompt"),
    max_new_tokens: int = typer.Option(64, help="Tokens per sample"),
    temperature: float = typer.Option(1.0, help="Sampling temperature (> 0)"),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold"),
    seed: int = typer.Option(0, help="Sampling seed"),
    aggregate: str = typer.Option("mean", help=AGG_HELP),
    alpha: float = typer.Option(1.0, help="mean_minus_std: reward = mean - alpha * std over members"),
    percentile: float = typer.Option(10.0, help="percentile: which percentile of the members' rewards"),
    out_dir: Path = typer.Option(
        Path("runs/best-of-n"), "--out-dir", "-o", help="Writes samples.jsonl, summary.json, plot"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Sample N completions per prompt and keep the best under a reward model; report scores and the KL bound."""
    import torch

    from alignkit.data.jsonl import write_jsonl
    from alignkit.models import load_model, load_tokenizer, pick_device
    from alignkit.models.load import check_model_source
    from alignkit.outputs import check_output_dir, claim_dir, write_json_atomic
    from alignkit.reward_model import RewardModel
    from alignkit.reward_model.best_of_n import best_of_n, best_of_n_kl, plot_best_of_n

    check_aggregate(aggregate)
    check_output_dir(out_dir, overwrite=overwrite, inputs=[prompts_file, reward_model, policy], option="--out-dir",
                     owner="best-of-n")  # fmt: skip
    prompts = read_prompts(prompt, prompts_file)
    best_of_n_kl(n)
    check_model_source(policy, "--policy")
    rm = RewardModel.load(reward_model)
    lm = load_model(policy, torch.float32, pick_device("auto"))
    tokenizer = load_tokenizer(policy)

    def progress(i, total, result):
        typer.echo(f"[{i}/{total}] best reward {float(result.rewards[result.best]):+.3f} "
                   f"(mean of {n}: {float(result.rewards.mean()):+.3f})")  # fmt: skip

    report = best_of_n(
        lm, tokenizer, rm, prompts, n, max_new_tokens, temperature, top_p, seed, aggregate, alpha, percentile,
        progress=progress,
    )  # fmt: skip
    summary = report.summary()
    claim_dir(out_dir, "best-of-n")
    write_jsonl(out_dir / "samples.jsonl", [r.record() for r in report.results])
    write_json_atomic(out_dir / "summary.json", summary)
    plot_best_of_n(report, out_dir / "best_of_n.png")
    typer.echo(
        f"best-of-{n} on {summary['prompts']} prompt(s): a single sample scores {summary['reward_mean_all']:+.3f} on "
        f"average (all {summary['prompts'] * n} samples), the best of {n} {summary['reward_mean_best']:+.3f} (mean "
        f"over prompts); KL bound log N - (N-1)/N = {summary['kl_bound']:.3f} nats"
    )
    typer.echo(f"wrote {out_dir / 'samples.jsonl'}, {out_dir / 'summary.json'}, {out_dir / 'best_of_n.png'}")


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(score)
    app.command("best-of-n")(best_of_n_cmd)
