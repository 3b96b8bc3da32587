"""The main job: DPO with LoRA on the embedded model and the project's preference pairs, with a report.

Steps: two judge reward models (hh-rlhf + the project's judge pairs, and hh-rlhf alone; never the demo pairs;
shipped with the package, else trained once and cached) -> load -> score held-out pairs and generate (before) ->
train -> score and generate (after) -> against the base on held-out prompts: win rate under each judge, KL on
samples, length / repetition / refusals (``demo_eval``) -> report.md + plots in the output directory, with each
goal stated met or not and the process's peak resident memory. Every number in the report is measured in this run.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path

from alignkit.data.readers import builtin_path
from alignkit.eval.pairwise import pairwise_report, score_pairs
from alignkit.eval.report.figures import PLOTS
from alignkit.eval.report.run_summary import write_run_report
from alignkit.generation import generate
from alignkit.models.cpu_memory import give_back_freed_memory, peak_rss_mb
from alignkit.outputs import own_output_dir
from alignkit.recipes.demo_eval import (
    HH_ONLY_TRAIN,
    JUDGE_DATA,
    JUDGE_EVAL,
    JUDGE_NAMES,
    JUDGE_OWN,
    JUDGE_RECIPE,
    JUDGE_TRAIN,
    SANITY_PAIRS,
    check_goals,
    demo_judge,
    eval_prompts,
    evaluate_vs_base,
    given_judge,
    goals_section,
)
from alignkit.train.loop import fit
from alignkit.train.run import make_config, prepare

DEMO_CONFIG = builtin_path("demo.yaml")
LIMITS = (
    "What a 135M model cannot be expected to learn here: 300 pairs and about 75 LoRA steps move style (length, "
    "tone, declining clear harm, admitting what it does not know) on prompts like the training ones. They teach no "
    "new knowledge or reasoning, and a preference written by the project's authors need not carry over to the "
    "preferences of hh-rlhf's crowdworkers on their topics: the hh-rlhf-only judge measures exactly that transfer, "
    "and a small or absent gain under it is the expected result at this scale, not a hidden one."
)


def release(p) -> None:
    """Drop what training holds (the accelerator's model and optimizer references, the policy's weights) and give
    the freed memory back to the OS."""
    p.accelerator.free_memory()
    p.model, p.method, p.train_items = None, None, []
    gc.collect()
    give_back_freed_memory()


def demo_prompts() -> list[str]:
    return [line.strip() for line in builtin_path("demo_prompts.txt").read_text().splitlines() if line.strip()]


def run_demo(
    output_dir: str = "runs/demo",
    overrides: list[str] = (),
    max_new_tokens: int = 48,
    log=print,
    judge_data: str = JUDGE_DATA,
    judge_recipe: list[str] = JUDGE_RECIPE,
    judge_slices: tuple[str, str] = (JUDGE_TRAIN, JUDGE_EVAL),
    hh_only_train: str = HH_ONLY_TRAIN,
    helpful_limit: int = 32,
    safety_limit: int = 48,
    eval_tokens: int = 64,
    time_goal: float = 600.0,
    judge: str | None = None,
    overwrite: bool = False,
    sanity_pairs: str = SANITY_PAIRS,
) -> dict:
    """Run the demo; returns the summary written to ``summary.json`` (the report is ``report.md``). Two judges
    train on ``judge_data`` with ``judge_recipe`` (or ship with the package): one on its ``judge_slices[0]`` plus the
    project's judge pairs, one on its ``hh_only_train`` alone; both are held out on ``judge_slices[1]``. The
    evaluation uses the held-out pairs' prompts plus
    ``helpful_limit`` helpfulness prompts, ``safety_limit`` safety prompts, ``eval_tokens`` new tokens each.
    ``judge``: a reward model directory to judge with instead (e.g. ``alignkit train rm --config configs/rm_hh.yaml``'s
    runs/rm_hh/model); its held-out accuracy is read from its saved eval metrics. ``sanity_pairs``: the clear-cut
    pairs the judge must agree with to be believed."""
    t0 = time.time()

    def stage(n: int, text: str) -> None:
        log(f"[{n}/7 {time.time() - t0:4.0f}s] {text}")

    own_output_dir(output_dir, "demo dpo", overwrite=overwrite)  # never a directory the demo did not write
    cfg = make_config("dpo", str(DEMO_CONFIG), [f"train.output_dir={output_dir}", *overrides])
    stage(1, "the judges: reward models trained on other data than the demo pairs")
    if judge is not None:
        judges = {"given": (judge, given_judge(judge))}
        log(f"      judge: {judge} (given)")
    else:  # before the policy loads: a first run trains a judge with nothing else in memory
        own_and_hh, hh_only = (judge_slices, JUDGE_OWN), ((hh_only_train, judge_slices[1]), None)
        judges = {}
        for name, (slices, own) in zip(JUDGE_NAMES, (own_and_hh, hh_only)):
            t_judge = time.time()
            judges[name] = demo_judge(judge_data, judge_recipe, log, slices, own)
            if judges[name][1].get("trained_in_this_run"):
                judges[name][1]["stage_seconds"] = round(time.time() - t_judge, 1)
                give_back_freed_memory()
    for name, (path, info) in judges.items():
        if path is None:
            log(f"      no judge {name}: {info['reason']}")
        else:
            log(f"      judge {name}: held-out accuracy {info['held_out_accuracy']:.3f} on {info['held_out']}")
    judge_info = {name: info for name, (_, info) in judges.items()}

    stage(2, f"loading the embedded model and the demo data ({DEMO_CONFIG.name})")
    p = prepare("dpo", cfg, log)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = demo_prompts()

    stage(3, f"before training: scoring {len(p.eval_items)} held-out pairs, generating for {len(prompts)} prompts")
    with p.accelerator.autocast():
        before = score_pairs(p.model, p.eval_items, p.tok.pad_id, cfg.train.eval_batch_size)
        gens_before = generate(p.model, p.tokenizer, prompts, max_new_tokens=max_new_tokens)
    log(f"      mean log-prob accuracy before: {before.mean_logp_accuracy:.3f}")

    stage(4, "training (DPO, LoRA)")
    result = fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, log=log)

    stage(5, "after training: scoring held-out pairs and generating")
    with p.accelerator.autocast():
        after = score_pairs(p.model, p.eval_items, p.tok.pad_id, cfg.train.eval_batch_size)
        gens_after = generate(p.model, p.tokenizer, prompts, max_new_tokens=max_new_tokens)
    pairwise = pairwise_report(before, after)
    mixed_precision, n_train, n_eval = p.accelerator.mixed_precision, len(p.train_items), len(p.eval_items)
    train_tokens = sum(len(x.prompt_ids) * 2 + len(x.chosen_ids) + len(x.rejected_ids) for x in p.train_items)
    release(p)  # the evaluation loads the trained adapter from disk: the training copy would only add to the peak
    del p

    eval_set = eval_prompts(cfg.data.eval, helpful_limit)
    stage(6, f"against the base on {len(eval_set)} held-out prompts: win rate, KL, length, repetition, refusals")
    paths = {name: path for name, (path, _) in judges.items()}
    m = evaluate_vs_base(
        str(result.model_dir), cfg.model.name, paths, eval_set, safety_limit, eval_tokens, log, sanity_pairs
    )
    (out / "eval_vs_base.json").write_text(json.dumps(m, indent=1, default=str) + "\n")

    stage(7, "writing the report")
    step_seconds = [h["seconds_per_step"] for h in result.history if "seconds_per_step" in h]
    summary = {
        "model": cfg.model.name,
        "method": f"dpo (beta {cfg.method.resolved_beta:.2g}), LoRA r={cfg.lora.r}",
        "mixed precision": mixed_precision,
        "train pairs": n_train,
        "held-out pairs": n_eval,
        "optimizer steps": result.steps,
        "training seconds (incl. reference precompute, evals)": round(result.wall_seconds, 1),
        "seconds per optimizer step": round(statistics.mean(step_seconds), 2),
        "training tokens per epoch": train_tokens,
        "peak memory (MB, RSS)": round(result.peak_memory_mb),
        "final train loss": result.final_metrics.get("loss"),
        "final eval loss": result.eval_metrics.get("eval/loss"),
        "total wall seconds (incl. judge, scoring, generation, evaluation)": round(time.time() - t0, 1),
        "peak resident memory of the whole demo (MB)": round(peak_rss_mb()),
    }
    setup = sum(info.get("stage_seconds", 0.0) for info in judge_info.values())  # one-time judge training, if any
    goals = check_goals(m, time.time() - t0, time_goal, setup, peak_rss_mb())
    gens = [{"prompt": q, "before": b, "after": a} for q, b, a in zip(prompts, gens_before, gens_after)]
    report = write_run_report(
        out,
        "alignkit demo: DPO on the embedded SmolLM2-135M-Instruct",
        summary,
        pairwise,
        gens,
        PLOTS,
        notes=[
            f"Config: {out / 'config.yaml'}; metrics: {out / 'metrics.jsonl'}; LoRA adapter: {result.model_dir}; "
            f"evaluation against the base: {out / 'eval_vs_base.json'}",
            LIMITS,
        ],
        sections=goals_section(goals, m, judge_info),
    )
    summary |= {"judge": judge_info, "goals": goals}
    (out / "summary.json").write_text(json.dumps({**summary, **pairwise}, indent=1))
    log(
        f"held-out mean log-prob accuracy {pairwise['mean_logp_accuracy_before']:.3f} -> "
        f"{pairwise['mean_logp_accuracy_after']:.3f}; implicit reward accuracy "
        f"{pairwise['implicit_reward_accuracy_after']:.3f}"
    )
    for g in goals:
        v = f"{g['value']:.3f}" if isinstance(g["value"], float) else g["value"]
        log(f"{'met' if g['met'] else 'NOT met'}: {g['goal']} = {v} (goal {g['target']}) {g['detail']}")
    log(f"report: {report} (total {time.time() - t0:.0f}s, peak resident memory {peak_rss_mb():.0f} MB)")
    return {**summary, **pairwise}
