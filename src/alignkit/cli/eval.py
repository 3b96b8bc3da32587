"""``alignkit eval``: math word problems (accuracy with a Wilson interval, pass@k); win rates of A vs B."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from alignkit.cli.eval_human import human_app
from alignkit.cli.eval_safety import eval_safety
from alignkit.cli.helpers import MODEL_HELP, OVERWRITE_HELP, check_aggregate, parse_key_values, read_input

eval_app = typer.Typer(
    no_args_is_help=True, help="Evaluate: math word problems (accuracy, pass@k), win rates of A vs B."
)

DATA_HELP = "Records with a prompt and a gold 'answer' (.jsonl/.json/.parquet/.csv, builtin:NAME)"
TEMPLATE_HELP = "Build each prompt from the record's fields (\\n = newline), e.g. '{question}\\nAnswer after ####.'"


@eval_app.command("math")
def eval_math(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    samples: int = typer.Option(1, help="Completions per prompt; > 1 also reports pass@k (needs a temperature > 0)"),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy; default 0 with 1 sample, else 1.0"),
    max_new_tokens: int = typer.Option(256, min=1, help="Tokens to generate per completion"),
    prompt_field: str = typer.Option("prompt", help="The field holding the prompt, e.g. question for GSM8K"),
    prompt_template: Optional[str] = typer.Option(None, help=TEMPLATE_HELP),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N records only"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write one record per prompt here (.jsonl)"),
    seed: int = typer.Option(0, help="Sampling seed (prompt i uses seed + i)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    environment: Optional[str] = typer.Option(
        None,
        help="Answer in multi-turn episodes of this environment (e.g. calculator, python, module:Class), as "
        "rollout.environment trains; the last model message is graded",
    ),
    max_turns: int = typer.Option(4, min=1, help="With --environment: model turns per episode at most"),
    environment_arg: List[str] = typer.Option(
        [],
        "--environment-arg",
        help="KEY=VALUE (a YAML value), repeatable: the environment's keyword arguments, e.g. demonstrations=true",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Sample completions for math problems and grade their final answers against the gold answers."""
    from alignkit.data.jsonl import write_jsonl
    from alignkit.eval.accuracy import check_sampling, evaluate_math, load_math_records
    from alignkit.generation import load_sampler

    temperature = temperature if temperature is not None else (0.0 if samples == 1 else 1.0)
    check_sampling(samples, temperature)
    records = read_input(data, *([out] if out else []), overwrite=overwrite)
    template = prompt_template.replace("\\n", "\n") if prompt_template else None
    examples = load_math_records(records, prompt_field, template, limit)  # bad records fail before loading
    env_args = parse_key_values(environment_arg, "--environment-arg")
    if environment:  # a bad environment name or argument fails before loading too
        from alignkit.rewards.environments import load_environment

        load_environment(environment, env_args)[1]()
    ready = load_sampler(model, device)
    result = evaluate_math(ready.model, ready.tok, examples, samples, temperature, max_new_tokens, seed=seed,
                           environment=environment, environment_args=env_args, max_turns=max_turns)  # fmt: skip
    where = f", in the {environment} environment (<= {max_turns} turns)" if environment else ""
    typer.echo(f"{model} on {data}, max {max_new_tokens} new tokens{where}")
    typer.echo("\n".join(result.lines()))
    if out:
        typer.echo(f"wrote {write_jsonl(out, result.records)}")


@eval_app.command("winrate")
def eval_winrate(
    a: Optional[str] = typer.Option(None, "--a", help="Responses of A: records with prompt, response[, category]"),
    b: Optional[str] = typer.Option(None, "--b", help="Responses of B to the same prompts"),
    a_model: Optional[str] = typer.Option(None, "--a-model", help=f"Policy A as a model that answers ({MODEL_HELP})"),
    b_model: Optional[str] = typer.Option(None, "--b-model", help="Policy B as a model that answers"),
    reward_model: Optional[str] = typer.Option(None, "--reward-model", "-r", help="Judge: a reward model/ensemble dir"),
    verifier: Optional[str] = typer.Option(
        None, help="Judge: a verifier (math, code, module:function) scoring against the records' fields (answer, ...)"
    ),
    prompts: Optional[str] = typer.Option(
        None,
        help="Prompt records (prompt[, category, answer]) for two models; default builtin:helpful_prompts.jsonl, "
        "with --verifier math builtin:arithmetic_heldout.jsonl",
    ),
    limit: Optional[int] = typer.Option(None, min=1, help="Use the first N prompts only"),
    max_new_tokens: int = typer.Option(128, min=1, help="Tokens per response of a model"),
    temperature: float = typer.Option(0.0, min=0.0, help="Sampling temperature of the models; 0 = greedy"),
    save_responses: Optional[Path] = typer.Option(None, help="Write the models' responses to DIR/a.jsonl, b.jsonl"),
    aggregate: str = typer.Option("mean", help="Ensemble aggregation: mean, min, percentile, mean_minus_std, ..."),
    margin: float = typer.Option(0.0, help="Reward differences up to this are ties"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write one judged record per prompt (.jsonl)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result for `alignkit report` (.json)"),
    seed: int = typer.Option(0, help="Bootstrap seed; sampling seed (A: seed + i on prompt i, B: seed + n + i)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Win rate of A over B judged by a reward model or a verifier: Wilson and bootstrap intervals, length-controlled
    rate.

    Each policy is a file of responses (--a/--b) or a model that answers (--a-model/--b-model): two models answer
    --prompts; a model facing a file answers the file's prompts."""
    from alignkit.cli.helpers import check_outputs
    from alignkit.data.jsonl import write_jsonl
    from alignkit.errors import UserError
    from alignkit.eval.judged import describe, judge_by_reward, judge_by_verifier, match_responses, responses_from_model
    from alignkit.eval.report.page import winrate_json
    from alignkit.outputs import write_json_atomic
    from alignkit.reward_model import RewardModel
    from alignkit.rewards import load_reward_function

    if (reward_model is None) == (verifier is None):
        what = "both" if reward_model else "neither"
        raise UserError(f"--reward-model and --verifier: {what} given. Fix: judge by exactly one, a reward model "
                        "(--reward-model DIR) or a verifier (--verifier math)")  # fmt: skip
    if verifier is not None:
        load_reward_function(verifier)  # a bad name fails before any model answers
    for side, file, model in (("a", a, a_model), ("b", b, b_model)):
        if (file is None) == (model is None):
            what = "both" if file else "neither"
            raise UserError(f"--{side} and --{side}-model: {what} given. Fix: give exactly one, a file of responses "
                            f"(--{side}) or a model (--{side}-model)")  # fmt: skip
    check_aggregate(aggregate)
    if margin < 0:  # before any model answers
        raise UserError(f"margin is {margin}. Fix: use a margin >= 0 (rewards closer than it are ties)")
    if prompts is not None and (a is not None or b is not None):
        raise UserError("--prompts is for two models; here the model answers the prompts of the file. Fix: drop "
                        "--prompts, or give both policies as models")  # fmt: skip
    if save_responses is not None and not (a_model or b_model):
        raise UserError("--save-responses: no policy is a model. Fix: drop it, or give --a-model/--b-model")
    models = {side: m for side, m in (("a", a_model), ("b", b_model)) if m is not None}
    saved = {side: save_responses / f"{side}.jsonl" for side in models} if save_responses else {}
    outputs = [p for p in (out, ("--json", json_out), *saved.values()) if p and (p[1] if isinstance(p, tuple) else p)]
    inputs = [x for x in (a, b, prompts) if x]
    check_outputs(*outputs, overwrite=overwrite, inputs=inputs)
    a_records = read_input(a)[:limit] if a else None  # bad files fail before loading
    b_records = read_input(b) if b else None
    if a_records is not None:
        asked = a_records
    elif b_records is not None:
        asked = b_records[:limit]
    else:
        default = "builtin:arithmetic_heldout.jsonl" if verifier == "math" else "builtin:helpful_prompts.jsonl"
        asked = read_input(prompts or default)[:limit]
    loaded: dict = {}  # one ready sampler per model name: a model against itself loads once
    for side, model, seed_at in (("a", a_model, seed), ("b", b_model, seed + len(asked))):
        if model is None:
            continue
        typer.echo(f"{side.upper()}: {model} answers {len(asked)} prompts (T={temperature})")
        records = responses_from_model(model, asked, max_new_tokens, temperature, seed_at, device, cache=loaded)
        a_records, b_records = (records, b_records) if side == "a" else (a_records, records)
        if side in saved:
            typer.echo(f"wrote {write_jsonl(saved[side], [rec for _, rec in records])}")
    loaded.clear()
    matched = match_responses(a_records, b_records)
    a_name, b_name = a_model or Path(a).name, b_model or Path(b).name
    if verifier is None:
        judge = reward_model
        result, rows = judge_by_reward(matched, RewardModel.load(reward_model, device=device), aggregate, margin,
                                       seed=seed)  # fmt: skip
    else:
        judge = f"verifier:{verifier}"
        result, rows, left_out = judge_by_verifier(matched, verifier, margin, seed=seed)
        if left_out:
            typer.echo(f"{left_out} of {len(rows)} prompts left out: the verifier could not score both responses")
    typer.echo("\n".join(describe(result, a_name, b_name)))
    if out:
        typer.echo(f"wrote {write_jsonl(out, rows)}")
    if json_out:
        typer.echo(f"wrote {write_json_atomic(json_out, winrate_json(result, a_name, b_name, judge))}")


@eval_app.command("rank")
def eval_rank(
    policies: List[str] = typer.Argument(..., metavar="NAME=FILE", help="Each policy's responses to the same prompts"),
    reward_model: str = typer.Option(..., "--reward-model", "-r", help="Judge: a reward model or ensemble dir"),
    aggregate: str = typer.Option("mean", help="Ensemble aggregation: mean, min, percentile, mean_minus_std, ..."),
    margin: float = typer.Option(0.0, help="Reward differences up to this are ties"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the ranking (.json, kind 'ranking')"),
    bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples of the comparisons for the intervals"),
    seed: int = typer.Option(0, help="Bootstrap seed"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Rank several policies by Bradley-Terry ratings: every pair compared per prompt by a reward model."""
    from alignkit.cli.helpers import check_outputs
    from alignkit.errors import UserError
    from alignkit.eval import ranking as rk
    from alignkit.reward_model import RewardModel

    check_aggregate(aggregate)
    if margin < 0:
        raise UserError(f"margin is {margin}. Fix: use a margin >= 0 (rewards closer than it are ties)")
    outputs = [out] if out else []
    specs = rk.parse_specs(policies)
    check_outputs(*outputs, overwrite=overwrite, inputs=[file for _, file in specs])
    matched = rk.match_many([(name, file, read_input(file)) for name, file in specs])  # before loading
    rewards = rk.score_responses(matched, RewardModel.load(reward_model, device=device), aggregate)
    ranking = rk.rank(rewards, matched.names, margin, n_boot=bootstrap, seed=seed)
    typer.echo("\n".join(rk.describe_ranking(ranking)))
    if out:
        typer.echo(f"wrote {rk.write_json(out, rk.ranking_json(ranking, reward_model))}")


@eval_app.command("overopt")
def eval_overopt(
    config: Path = typer.Option(..., "--config", "-c", help="An overoptimization study, e.g. configs/overopt_hh.yaml"),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: --set pool=32 (repeatable)"),
):
    """Gold vs proxy reward under best-of-n and RL checkpoints (Gao et al. 2023): fits, peaks, conservative scoring."""
    from alignkit.recipes.overopt import describe_overopt, load_overopt_config, run_overopt

    cfg = load_overopt_config(str(config), overrides)
    result = run_overopt(cfg, log=typer.echo)
    typer.echo("\n".join(describe_overopt(result)))
    typer.echo(f"wrote {Path(cfg.output_dir) / 'overopt.json'}, {Path(cfg.output_dir) / 'overopt.png'}")


@eval_app.command("metrics")
def eval_metrics(
    model: str = typer.Option(..., "--model", "-m", help="The trained policy: model dir or LoRA adapter dir"),
    reference: Optional[str] = typer.Option(None, help="Reference model; default the adapter's base, else embedded"),
    prompts: str = typer.Option("builtin:helpful_prompts.jsonl", help="Prompt records (prompt[, category])"),
    samples: int = typer.Option(2, help="Samples per prompt from each model"),
    max_new_tokens: int = typer.Option(96, help="Tokens per sample"),
    temperature: float = typer.Option(1.0, help="Sampling temperature (1 = the policy, as the KL estimators assume)"),
    limit: Optional[int] = typer.Option(None, help="Use the first N prompts only"),
    reward_model: Optional[str] = typer.Option(None, "--reward-model", "-r", help="Score both models' samples"),
    winrate_temperature: Optional[float] = typer.Option(
        None,
        help="Win rate on one fresh response per prompt each at this temperature (0 = greedy); default: on the samples",
    ),
    pairs: Optional[str] = typer.Option(None, help="Held-out preference pairs: implicit-reward accuracy, length bias"),
    pairs_limit: Optional[int] = typer.Option(None, help="Use the first N pairs only"),
    safety: bool = typer.Option(False, help="Also run the shipped safety set (greedy) on both models"),
    safety_limit: Optional[int] = typer.Option(None, help="Safety prompts, spread over kinds and categories"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the metrics (.json, kind 'metrics')"),
    seed: int = typer.Option(0, help="Sampling seed (prompt i uses seed + i)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """KL to the reference on samples (k1/k2/k3/exact), length, repetition, distinct-n, reward-model scores and win
    rate over the reference, implicit-reward accuracy and length bias on pairs, refusal rates."""
    from alignkit.cli.helpers import check_outputs
    from alignkit.data import to_pairwise, to_prompt, validate_records
    from alignkit.eval.policy import Settings, describe_metrics, run_metrics
    from alignkit.outputs import write_json_atomic

    check_outputs(*([out] if out else []), overwrite=overwrite, inputs=[prompts, pairs])
    records = [(source, rec) for source, rec in read_input(prompts)][:limit]
    examples = validate_records(records, to_prompt)[0]
    rows = [{"prompt": x.prompt, "category": x.columns.get("category")} for x in examples]
    pair_examples = None
    if pairs:
        pair_examples = validate_records(read_input(pairs)[:pairs_limit], to_pairwise, "skip")[0]
    safety_records = None
    if safety:
        from alignkit.eval.safety import load_safety_prompts, subset

        safety_records = subset(load_safety_prompts(), safety_limit)
    if reward_model:
        from alignkit.errors import UserError
        from alignkit.reward_model.model import member_dirs, read_info

        if not Path(reward_model).exists():
            raise UserError(f"reward model {reward_model} does not exist. Fix: pass the directory alignkit train rm "
                            "wrote")  # fmt: skip
        for member in member_dirs(reward_model):  # not a reward model: fails here, before any model loads
            read_info(member)
    settings = Settings(samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                        winrate_temperature=winrate_temperature)  # fmt: skip
    settings.validate()  # before any model loads
    result = run_metrics(
        model, reference, rows, settings, reward_model, pair_examples, safety_records, device, typer.echo
    )
    typer.echo("\n".join(describe_metrics(result)))
    if out:
        typer.echo(f"wrote {write_json_atomic(out, result)}")


eval_app.command("safety")(eval_safety)
eval_app.add_typer(human_app, name="human")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
