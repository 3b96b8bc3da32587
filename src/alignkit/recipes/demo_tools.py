"""The tool demo (``alignkit demo --method tools``): GRPO teaches the embedded model to call a calculator in
multi-turn episodes, measured on arithmetic phrased by templates it never trained on, and compared with tool-free
GRPO at the same budget (prompts, samples per prompt, optimizer steps, learning rate).

Steps: load -> greedy held-out accuracy with the calculator and without tools -> GRPO in the calculator
environment -> held-out accuracy with the calculator again -> the base model again, GRPO without tools on the same
training problems -> held-out accuracy without tools -> report.md / summary.json. Every number is measured in
this run; the held-out problems come from 10 whole templates (``data.arithmetic.HELDOUT_TEMPLATES``) outside the
20 the training problems use.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from alignkit.data.jsonl import write_jsonl
from alignkit.data.readers import builtin_path
from alignkit.eval.accuracy import MathEvalResult, evaluate_math
from alignkit.eval.report.blocks import Heading, Table, Text
from alignkit.eval.report.figures import RL_PLOTS
from alignkit.eval.report.run_summary import write_run_report
from alignkit.outputs import own_output_dir
from alignkit.recipes.demo_grpo import paired_change
from alignkit.rewards.verifiers.math import answers_match
from alignkit.train.loop import fit
from alignkit.train.run import make_config, prepare

TOOLS_CONFIG = builtin_path("demo_tools.yaml")
_TOOL_RESULT = re.compile(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", re.DOTALL)
HELDOUT = "builtin:arithmetic_tools_heldout.jsonl"


def tool_free_overrides(cfg) -> list[str]:
    """The tool-free arm at the tool arm's budget: same data, prompts, samples, steps, learning rate and sampling
    temperature; the math verifier as reward, and one turn of the tool arm's per-turn allowance (64 tokens at
    least, what the tool-free GRPO demo uses)."""
    ro = cfg.rollout
    return [
        "rollout.environment=null", "rollout.environment_args={}", "method.rewards=[math]",
        f"rollout.max_new_tokens={max(64, ro.max_tokens_per_turn)}", "data.max_length=256",
    ]  # fmt: skip


def run_tools_demo(
    output_dir: str = "runs/demo-tools",
    overrides: list[str] = (),
    log=print,
    heldout: int | None = 100,
    overwrite: bool = False,
) -> dict:
    """Run the demo; returns the summary written to ``summary.json`` (the report is ``report.md``). ``heldout``:
    the number of held-out problems evaluated (of 200)."""
    t0 = time.time()

    def stage(n: int, text: str) -> None:
        log(f"[{n}/6 {time.time() - t0:4.0f}s] {text}")

    own_output_dir(output_dir, "demo tools", overwrite=overwrite)  # never a directory the demo did not write
    cfg = make_config("grpo", str(TOOLS_CONFIG), [f"train.output_dir={output_dir}", *overrides])
    ro = cfg.rollout
    stage(1, f"loading the embedded model and the arithmetic problems ({TOOLS_CONFIG.name})")
    p = prepare("grpo", cfg, log)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with_tools = dict(environment=ro.environment, environment_args=ro.environment_args, max_turns=ro.max_turns)
    turn_tokens = ro.max_tokens_per_turn or ro.max_new_tokens
    plain_tokens = max(64, turn_tokens)

    stage(2, f"before training: greedy answers to {heldout} held-out problems, with the calculator and without")
    tools_before = evaluate_math(p.model, p.tok, HELDOUT, max_new_tokens=turn_tokens, limit=heldout, **with_tools)
    plain_before = evaluate_math(p.model, p.tok, HELDOUT, max_new_tokens=plain_tokens, limit=heldout)
    log(f"      with tools {tools_before.accuracy:.3f} (tool used in {tools_before.tool_use:.0%}), "
        f"without {plain_before.accuracy:.3f}")  # fmt: skip

    stage(3, f"GRPO in the {ro.environment} environment ({cfg.train.max_steps} steps)")
    tools_run = fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, log=log)
    tools_after = evaluate_math(p.model, p.tok, HELDOUT, max_new_tokens=turn_tokens, limit=heldout, **with_tools)
    log(f"      with tools after: {tools_after.accuracy:.3f} (tool used in {tools_after.tool_use:.0%})")

    stage(4, "the base model again: GRPO without tools, same problems and budget")
    plain_cfg = make_config("grpo", str(TOOLS_CONFIG), [f"train.output_dir={out / 'tool-free'}", *overrides,
                                                         *tool_free_overrides(cfg)])  # fmt: skip
    q = prepare("grpo", plain_cfg, log)
    plain_run = fit(q.method, plain_cfg, q.model, q.tokenizer, q.train_items, q.eval_items, q.accelerator, log=log)
    plain_after = evaluate_math(q.model, q.tok, HELDOUT, max_new_tokens=plain_tokens, limit=heldout)
    log(f"      without tools after: {plain_after.accuracy:.3f}")

    stage(5, "comparing")
    tools_change, plain_change = paired_change(tools_before, tools_after), paired_change(plain_before, plain_after)
    final = paired_change(plain_after, tools_after)
    errors = {"before": error_kinds(tools_before), "after": error_kinds(tools_after)}
    write_jsonl(out / "heldout_with_tools_after.jsonl", tools_after.records)

    stage(6, "writing the report")
    summary = {
        "model": cfg.model.name,
        "held-out problems (10 templates never trained on)": tools_before.n,
        "training": f"GRPO, {cfg.train.max_steps} steps x {ro.prompts_per_step} prompts x "
        f"{ro.samples_per_prompt} samples, lr {cfg.train.learning_rate:g}, LoRA r {cfg.lora.r if cfg.lora else '-'}",
        "with tools: accuracy before": round(tools_before.accuracy, 4),
        "with tools: accuracy after": round(tools_after.accuracy, 4),
        "with tools: change (points)": round(100 * tools_change["change"], 1),
        "with tools: McNemar p": f"{tools_change['p_value']:.3g}",
        "tool used before / after": f"{tools_before.tool_use:.2f} / {tools_after.tool_use:.2f}",
        "tool-free GRPO: accuracy before": round(plain_before.accuracy, 4),
        "tool-free GRPO: accuracy after": round(plain_after.accuracy, 4),
        "tool-free GRPO: change (points)": round(100 * plain_change["change"], 1),
        "tools after vs tool-free after (points)": round(100 * final["change"], 1),
        "tools after vs tool-free after: McNemar p": f"{final['p_value']:.3g}",
        "wrong answers after: wrong expression / misread result / no call": f"{errors['after']['wrong expression']}"
        f" / {errors['after']['misread result']} / {errors['after']['no tool call']}",
        "seconds per step (tools / tool-free)": f"{_mean(tools_run, 'seconds_per_step'):.1f} / "
        f"{_mean(plain_run, 'seconds_per_step'):.1f}",
        "total wall seconds": round(time.time() - t0, 1),
    }
    gens = [{"prompt": r["prompt"], "before": _shown(b), "after": _shown(r)}
            for b, r in list(zip(tools_before.records, tools_after.records))[:6]]  # fmt: skip
    report = write_run_report(
        out, "alignkit demo: GRPO teaches the embedded SmolLM2-135M-Instruct to use a calculator", summary, None,
        gens, RL_PLOTS, notes=[f"Config: {out / 'config.yaml'}; tool-free arm: {out / 'tool-free'}"],
        sections=_sections(tools_before, tools_after, plain_before, plain_after, tools_change, plain_change, final,
                           errors),
    )  # fmt: skip
    full = {**summary, "tools_before": tools_before.summary(), "tools_after": tools_after.summary(),
            "plain_before": plain_before.summary(), "plain_after": plain_after.summary(),
            "tools_change": tools_change, "plain_change": plain_change, "tools_vs_plain": final,
            "errors_with_tools": errors}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(full, indent=1))
    log(f"report: {report} (total {time.time() - t0:.0f}s)")
    return full


def _mean(result, key: str) -> float:
    values = [h[key] for h in result.history if key in h]
    return sum(values) / len(values) if values else float("nan")


def _cell(r: MathEvalResult) -> str:
    return f"{r.accuracy:.3f} [{r.interval[0]:.3f}, {r.interval[1]:.3f}]"


def error_kinds(result: MathEvalResult) -> dict[str, int]:
    """Why the episodes' answers were wrong (first sample of each problem): ``wrong expression`` (a tool result
    came back and the answer repeats it: the model sent the wrong arithmetic), ``misread result`` (a tool result
    came back and the answer differs from it), ``no tool call``; and how many were right."""
    counts = {"right": 0, "wrong expression": 0, "misread result": 0, "no tool call": 0}
    for r in result.records:
        if r["rewards"][0] == 1.0:
            counts["right"] += 1
            continue
        results = _TOOL_RESULT.findall(r.get("transcripts", [""])[0])
        if not r.get("tool_calls", [0])[0] or not results:
            counts["no tool call"] += 1
        elif r["extracted"][0] is not None and answers_match(r["extracted"][0], results[-1].strip()):
            counts["wrong expression"] += 1
        else:
            counts["misread result"] += 1
    return counts


def _sections(tb, ta, pb, pa, tools_change, plain_change, final, errors) -> list:
    rows = [
        ["GRPO with the calculator", _cell(tb), _cell(ta), f"{100 * tools_change['change']:+.1f}",
         f"{tools_change['p_value']:.3g}", f"{tb.tool_use:.2f} -> {ta.tool_use:.2f}"],
        ["GRPO without tools", _cell(pb), _cell(pa), f"{100 * plain_change['change']:+.1f}",
         f"{plain_change['p_value']:.3g}", "-"],
    ]  # fmt: skip
    return [
        Heading(f"Held-out accuracy (greedy, {tb.n} problems from 10 templates the training never used)"),
        Table(["arm", "before", "after", "change (points)", "McNemar p", "tool use"], rows),
        Text(
            f"After training, the tool arm vs the tool-free arm on the same problems: {100 * final['change']:+.1f} "
            f"points (McNemar exact p = {final['p_value']:.3g}). Intervals are 95% Wilson intervals. Both arms start "
            "from the same base model and see the same training problems, prompts per step, samples per prompt, "
            "steps and learning rate; tool episodes are longer (prompt with two worked calls, several turns), so "
            "they cost more compute per step."
        ),
        Heading("Why answers with the calculator were wrong"),
        Table(["", *errors["before"]], [[k, *v.values()] for k, v in errors.items()]),
        Text(
            "What a 135M model can learn here is to call the tool on every problem, in the format two worked calls "
            "showed it, to copy the result into its answer and to stop. What it cannot learn in a few steps is "
            "which arithmetic a new phrasing asks for: a wrong expression sent to a right calculator (the answer "
            "repeats the tool's result) is counted above. The tool-free arm's change is the same training budget "
            "spent on answering directly. Seed spread: rerun with --set train.seed=N."
        ),
    ]


def _shown(record: dict) -> str:
    mark = "correct" if record["rewards"][0] == 1.0 else f"wrong (gold {record['gold']})"
    transcript = record.get("transcripts", record["completions"])[0]
    return f"{transcript} [{mark}]"
