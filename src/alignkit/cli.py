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
    help="Align causal language models: SFT, the DPO family, KTO, reward models, best-of-N, GRPO/RLOO and PPO.",
)

SET_HELP = "Override a config field: section.field=value (repeatable), e.g. --set train.learning_rate=1e-5"


@app.command()
def train(
    method: str = typer.Argument(
        ..., help="sft, dpo, ipo, simpo, orpo, hinge, robust, kto, rm, grpo, rloo, ppo, online-dpo or online-kto"
    ),
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
):
    """Generate completions for prompts with the batched KV-cache sampler."""
    import time

    import torch

    from alignkit.data.tokenize import Tokenizer
    from alignkit.generation.sampler import Sampler, SamplingParams
    from alignkit.models import load_model, load_tokenizer, pick_device, pick_mixed_precision

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
    if out is not None and (out.is_dir() or (prompts_file is not None and out.resolve() == prompts_file.resolve())):
        what = "a directory" if out.is_dir() else "the prompts file; refusing to overwrite it"
        raise UserError(f"--out {out} is {what}. Fix: write to another file, e.g. completions.jsonl")
    prompts = _prompts(prompt, prompts_file)
    device = pick_device("auto")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bf16: this GPU does not support bf16. Fix: use --dtype auto or fp32")
    bf16 = pick_mixed_precision(dtype, device) == "bf16"
    lm = load_model(model, torch.float32, device)
    sampler = Sampler(lm, Tokenizer(load_tokenizer(model)), max_rows=max_rows)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        results = sampler.generate(prompts, params, seed=seed, chat=not raw)
    seconds = time.perf_counter() - t0
    if out is not None:
        from alignkit.data.feedback import write_jsonl

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
    tokens = sampler.stats.tokens
    how = f"{device.type}, {'bf16 autocast' if bf16 else 'fp32'}"
    typer.echo(f"{tokens} tokens in {seconds:.2f}s: {tokens / max(seconds, 1e-9):.1f} tokens/s ({how})")


def _prompts(prompt: list[str], prompts_file: Path | None) -> list:
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


AGG_HELP = "How ensemble members combine: mean, min, percentile, mean_minus_std"


@app.command()
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
):
    """Score (prompt, response) records with a saved reward model or ensemble (normalized rewards)."""
    from alignkit.data.feedback import write_jsonl
    from alignkit.reward import AGGREGATIONS, RewardModel
    from alignkit.reward.scoring import score_records

    if aggregate not in AGGREGATIONS:
        raise UserError(f"--aggregate {aggregate}: unknown. Fix: use one of {', '.join(AGGREGATIONS)}")
    records = _read_input(input_, out)
    rm = RewardModel.load(reward_model)
    scored, summary = score_records(rm, records, aggregate, alpha, percentile, batch_size)
    typer.echo(f"scored {len(scored)} records with {rm.heads} reward head(s), aggregate {aggregate}")
    if summary:
        typer.echo(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    typer.echo(f"wrote {write_jsonl(out, scored)}")


@app.command("best-of-n")
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
):
    """Sample N completions per prompt and keep the best under a reward model; report scores and the KL bound."""
    import json

    import torch

    from alignkit.data.feedback import write_jsonl
    from alignkit.models import load_model, load_tokenizer, pick_device
    from alignkit.reward import AGGREGATIONS, RewardModel
    from alignkit.reward.best_of_n import best_of_n, best_of_n_kl, plot_best_of_n

    if aggregate not in AGGREGATIONS:
        raise UserError(f"--aggregate {aggregate}: unknown. Fix: use one of {', '.join(AGGREGATIONS)}")
    prompts = _prompts(prompt, prompts_file)
    best_of_n_kl(n)
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
    write_jsonl(out_dir / "samples.jsonl", [r.record() for r in report.results])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_best_of_n(report, out_dir / "best_of_n.png")
    typer.echo(
        f"best-of-{n} on {summary['prompts']} prompts: mean reward {summary['reward_mean_n1']:+.3f} (one sample) -> "
        f"{summary['reward_mean_best']:+.3f} (best); KL bound log N - (N-1)/N = {summary['kl_bound']:.3f} nats"
    )
    typer.echo(f"wrote {out_dir / 'samples.jsonl'}, {out_dir / 'summary.json'}, {out_dir / 'best_of_n.png'}")


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
def report(
    run_dirs: List[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories (metrics.jsonl, eval/)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: FIRST_RUN_DIR/report)"),
    title: Optional[str] = typer.Option(None, help="Page title (default: the run names)"),
):
    """One self-contained HTML page (inline plots, no network) and Markdown from runs, side by side: training
    curves, evaluation tables, win rates with intervals, overoptimization curves, example generations."""
    from alignkit.eval.html_report import build_report

    paths = build_report(run_dirs, out or run_dirs[0] / "report", title, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {paths['html']}\nwrote {paths['md']}")


@app.command()
def compare(
    config: Path = typer.Option(..., "--config", "-c", help="A comparison recipe, e.g. configs/compare_hh.yaml"),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: --set eval_prompt_limit=16"),
):
    """Train SFT, DPO, KTO and PPO from one base and compare them with a held-out judge reward model: win rate vs
    SFT with intervals, judge reward, KL, length, refusal rates, training time (comparison.md / .json)."""
    from alignkit.eval.compare import comparison_table, load_compare_config, run_compare

    cfg = load_compare_config(str(config), overrides)
    result = run_compare(cfg, log=typer.echo)
    typer.echo("\n".join(comparison_table(result)))
    typer.echo(f"wrote {Path(cfg.output_dir) / 'comparison.md'}, {Path(cfg.output_dir) / 'comparison.json'}")


@app.command()
def demo(
    method: str = typer.Option("dpo", "--method", help="dpo (LoRA on preference pairs) or grpo (math verifier)"),
    output_dir: Optional[str] = typer.Option(None, help="Where the report, metrics and model go (runs/demo[-grpo])"),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    judge: Optional[str] = typer.Option(
        None, help="dpo: a reward model dir to judge the win rate with (default: one trained on hh-rlhf, cached)"
    ),
):
    """The main job on the embedded model, with a report: DPO with LoRA on the shipped pairs, measured against the
    base by a judge trained on other data; or GRPO with the math verifier on the project's arithmetic problems
    (held-out accuracy before and after)."""
    if method == "dpo":
        from alignkit.demo import run_demo

        run_demo(output_dir or "runs/demo", set_, judge=judge)
    elif method == "grpo":
        from alignkit.demo_grpo import run_grpo_demo

        run_grpo_demo(output_dir or "runs/demo-grpo", set_)
    else:
        raise UserError(f"--method {method}: there is a dpo and a grpo demo. Fix: --method dpo or --method grpo")


@app.command("config")
def show_config(method: str = typer.Argument(..., help="sft, dpo, ipo, simpo, orpo, hinge, robust, kto, rm, grpo, "
                                                          "rloo, ppo, online-dpo or online-kto")):  # fmt: skip
    """Print the full default config of METHOD as YAML, with every field."""
    import yaml

    from alignkit.config import to_dict
    from alignkit.train import make_config
    from alignkit.train.run import METHODS

    overrides = ["data.train=PATH/TO/DATA.jsonl"]
    if method in METHODS and hasattr(METHODS[method].config_class(), "rollout"):
        overrides.append("method.rewards=[math]")  # online methods need a reward to validate
    cfg = make_config(method, overrides=overrides)
    typer.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False))


data_app = typer.Typer(no_args_is_help=True, help="Prepare thumbs-up/down feedback for training: clean, pairs, split.")
app.add_typer(data_app, name="data")

INPUT_HELP = "Records: .jsonl/.json/.parquet/.csv, a saved HF dataset, or builtin:NAME"


def _read_input(spec: str, *outputs: Path) -> list:
    """The records of ``spec``; refuses outputs that are the input file or a directory."""
    from alignkit.data.readers import BUILTIN, builtin_path, read_records

    source = builtin_path(spec[len(BUILTIN) :]) if spec.startswith(BUILTIN) else Path(spec)
    for out in outputs:
        if out.resolve() == source.resolve():
            raise UserError(f"{out} is the input file; refusing to overwrite it. Fix: write to another file")
        if out.is_dir():
            raise UserError(f"{out} is a directory. Fix: give a file name, e.g. {out / 'out.jsonl'}")
    return read_records(spec)


@data_app.command("clean")
def data_clean(
    input_: str = typer.Argument(..., metavar="INPUT", help=INPUT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the kept records (.jsonl)"),
    min_rate: float = typer.Option(0.1, help="Drop raters approving less often than this"),
    max_rate: float = typer.Option(0.9, help="Drop raters approving more often than this"),
    min_ratings: int = typer.Option(5, help="Judge only raters with at least this many ratings"),
    min_chars: int = typer.Option(10, help="Drop responses shorter than this many characters"),
):
    """Drop biased raters, duplicate (prompt, completion) records and too-short responses; say what and why."""
    from alignkit.data.feedback import clean_feedback, write_jsonl

    kept, report = clean_feedback(_read_input(input_, out), min_rate, max_rate, min_ratings, min_chars)
    typer.echo("\n".join(report.lines()))
    typer.echo(f"wrote {len(kept)} records to {write_jsonl(out, [rec for _, rec in kept])}")


@data_app.command("pairs")
def data_pairs(
    input_: str = typer.Argument(..., metavar="INPUT", help=INPUT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the prompt/chosen/rejected pairs (.jsonl)"),
    max_pairs_per_prompt: int = typer.Option(8, help="At most this many pairs per prompt (a seeded choice)"),
    seed: int = typer.Option(0, help="Seed for choosing pairs over the cap"),
):
    """Pair each thumbs-up completion with each thumbs-down completion of the same prompt."""
    from alignkit.data.feedback import feedback_to_pairs, write_jsonl

    records = _read_input(input_, out)
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
):
    """Split records by prompt: all records of one prompt land in the same split."""
    from alignkit.data.feedback import split_by_prompt, write_jsonl

    try:
        shares = [float(f) for f in fractions.split(",")]
    except ValueError:
        raise UserError(f"--fractions {fractions}: not numbers. Fix: e.g. --fractions 0.8,0.1,0.1") from None
    outs = [out_dir / f"{name}.jsonl" for name in ("train", "val", "test")]
    splits = split_by_prompt(_read_input(input_, *outs), shares, seed)
    for path, split in zip(outs, splits):
        write_jsonl(path, [rec for _, rec in split])
        typer.echo(f"{path}: {len(split)} records")


from alignkit.cli_cai import cai_app  # noqa: E402
from alignkit.cli_eval import eval_app  # noqa: E402
from alignkit.cli_feedback import feedback_app  # noqa: E402
from alignkit.cli_judge import judge_app  # noqa: E402
from alignkit.cli_serve import retrain, serve  # noqa: E402
from alignkit.cli_verify import verify_app  # noqa: E402

app.add_typer(verify_app, name="verify")
app.add_typer(eval_app, name="eval")
app.add_typer(cai_app, name="cai")
app.add_typer(judge_app, name="judge")
app.add_typer(feedback_app, name="feedback")
app.command("serve")(serve)
app.command("retrain")(retrain)


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
