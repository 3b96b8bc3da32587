"""The main job: DPO with LoRA on the embedded model and the project's preference pairs, with a report.

Steps: load -> score held-out pairs and generate (before) -> train -> score and generate (after) ->
report.md + plots in the output directory. Every number in the report is measured in this run.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from alignkit.data.readers import builtin_path
from alignkit.eval.pairwise import pairwise_report, score_pairs
from alignkit.eval.report import plot_metrics, write_report
from alignkit.generation import generate
from alignkit.train.loop import fit
from alignkit.train.run import make_config, prepare

DEMO_CONFIG = builtin_path("demo.yaml")


def demo_prompts() -> list[str]:
    return [line.strip() for line in builtin_path("demo_prompts.txt").read_text().splitlines() if line.strip()]


def run_demo(output_dir: str = "runs/demo", overrides: list[str] = (), max_new_tokens: int = 48, log=print) -> dict:
    """Run the demo; returns the summary written to ``summary.json`` (the report is ``report.md``)."""
    t0 = time.time()

    def stage(n: int, text: str) -> None:
        log(f"[{n}/5 {time.time() - t0:4.0f}s] {text}")

    cfg = make_config("dpo", str(DEMO_CONFIG), [f"train.output_dir={output_dir}", *overrides])
    stage(1, f"loading the embedded model and the demo data ({DEMO_CONFIG.name})")
    p = prepare("dpo", cfg, log)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = demo_prompts()

    stage(2, f"before training: scoring {len(p.eval_items)} held-out pairs, generating for {len(prompts)} prompts")
    with p.accelerator.autocast():
        before = score_pairs(p.model, p.eval_items, p.tok.pad_id, cfg.train.eval_batch_size)
        gens_before = generate(p.model, p.tokenizer, prompts, max_new_tokens=max_new_tokens)
    log(f"      mean log-prob accuracy before: {before.mean_logp_accuracy:.3f}")

    stage(3, "training (DPO, LoRA)")
    result = fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, log=log)

    stage(4, "after training: scoring held-out pairs and generating")
    with p.accelerator.autocast():
        after = score_pairs(p.model, p.eval_items, p.tok.pad_id, cfg.train.eval_batch_size)
        gens_after = generate(p.model, p.tokenizer, prompts, max_new_tokens=max_new_tokens)
    pairwise = pairwise_report(before, after)

    stage(5, "writing the report")
    plots = plot_metrics(out / "metrics.jsonl", out)
    step_seconds = [h["seconds_per_step"] for h in result.history if "seconds_per_step" in h]
    train_tokens = sum(len(x.prompt_ids) * 2 + len(x.chosen_ids) + len(x.rejected_ids) for x in p.train_items)
    summary = {
        "model": cfg.model.name,
        "method": f"dpo (beta {cfg.method.resolved_beta:.2g}), LoRA r={cfg.lora.r}",
        "mixed precision": p.accelerator.mixed_precision,
        "train pairs": len(p.train_items),
        "held-out pairs": len(p.eval_items),
        "optimizer steps": result.steps,
        "training seconds (incl. reference precompute, evals)": round(result.wall_seconds, 1),
        "seconds per optimizer step": round(statistics.mean(step_seconds), 2),
        "training tokens per epoch": train_tokens,
        "peak memory (MB, RSS)": round(result.peak_memory_mb),
        "final train loss": result.final_metrics.get("loss"),
        "final eval loss": result.eval_metrics.get("eval/loss"),
        "total wall seconds (incl. scoring, generation)": round(time.time() - t0, 1),
    }
    gens = [{"prompt": q, "before": b, "after": a} for q, b, a in zip(prompts, gens_before, gens_after)]
    report = write_report(
        out,
        "alignkit demo: DPO on the embedded SmolLM2-135M-Instruct",
        summary,
        pairwise,
        gens,
        plots,
        notes=[f"Config: {out / 'config.yaml'}; metrics: {out / 'metrics.jsonl'}; LoRA adapter: {result.model_dir}"],
    )
    (out / "summary.json").write_text(json.dumps({**summary, **pairwise}, indent=1))
    log(
        f"held-out mean log-prob accuracy {pairwise['mean_logp_accuracy_before']:.3f} -> "
        f"{pairwise['mean_logp_accuracy_after']:.3f}; implicit reward accuracy "
        f"{pairwise['implicit_reward_accuracy_after']:.3f}"
    )
    log(f"report: {report} (total {time.time() - t0:.0f}s)")
    return {**summary, **pairwise}
