"""The online demo (``alignkit demo --method grpo``): GRPO with the math verifier on the embedded model and the
project's arithmetic word problems, with accuracy on held-out templates before and after.

The problems come in three phrasings per scenario (``data.arithmetic.phrasing_splits``). Training sees 40 of the
90 phrasings; the headline is accuracy on the 50 it never saw (a new wording of a trained scenario, or a new
scenario altogether), with accuracy on new problems of the trained phrasings ("in-template") beside it: a gain
that shows only in-template is the generator's templates learned, not arithmetic.

Steps: load -> greedy accuracy on held-out templates and in-template (100 problems per kind, 95% Wilson intervals)
-> GRPO (rollouts in the loop) -> the same problems again, the change with McNemar's exact test on the paired
answers -> report.md + plots. Every number in the report is measured in this run.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path

from alignkit.data.arithmetic import SPLITS
from alignkit.data.readers import builtin_path, read_records
from alignkit.eval.accuracy import MathEvalResult, evaluate_math
from alignkit.eval.report.blocks import Heading, Table, Text
from alignkit.eval.report.figures import RL_PLOTS
from alignkit.eval.report.run_summary import write_run_report
from alignkit.models.cpu_memory import give_back_freed_memory, peak_rss_mb
from alignkit.outputs import own_output_dir
from alignkit.train.loop import fit
from alignkit.train.run import make_config, prepare

GRPO_DEMO_CONFIG = builtin_path("demo_grpo.yaml")
HELDOUT = "builtin:arithmetic_phrasings_heldout.jsonl"
UNSEEN = ("new_phrasing", "new_scenario")  # the held-out templates: the headline
LIMITS = (
    "What a 135M model cannot be expected to learn in 20 GRPO steps: mostly the answer format and which operation a "
    "familiar wording asks for. A wording it never saw must be mapped to an operation from the words alone, which "
    "this model rarely does; expect the in-template gain to exceed the held-out one, and arithmetic itself (long "
    "multiplication, division with remainders, three or more steps) to stay weak."
)


def heldout_problems(limit: int | None = None) -> dict[str, list[dict]]:
    """The held-out records by ``SPLITS`` kind, the first ``limit`` of each (None: all 100)."""
    rows = [r for _, r in read_records(HELDOUT)]
    return {kind: [r for r in rows if r["split"] == kind][:limit] for kind in SPLITS}


def accuracy_by_kind(result: MathEvalResult, kinds: list[str]) -> dict[str, float]:
    """Accuracy of ``result`` per kind, ``kinds[i]`` the kind of its record i."""
    out: dict[str, list[float]] = {}
    for kind, record in zip(kinds, result.records):
        out.setdefault(kind, []).append(record["rewards"][0])
    return {k: sum(v) / len(v) for k, v in out.items()}


def run_grpo_demo(
    output_dir: str = "runs/demo-grpo",
    overrides: list[str] = (),
    log=print,
    heldout: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the GRPO demo; returns the summary written to ``summary.json`` (the report is ``report.md``).
    ``heldout``: evaluate on the first N held-out problems of each kind only (tests); None = all 100 of each."""
    t0 = time.time()

    def stage(n: int, text: str) -> None:
        log(f"[{n}/5 {time.time() - t0:4.0f}s] {text}")

    own_output_dir(output_dir, "demo grpo", overwrite=overwrite)  # never a directory the demo did not write
    cfg = make_config("grpo", str(GRPO_DEMO_CONFIG), [f"train.output_dir={output_dir}", *overrides])
    stage(1, f"loading the embedded model and the arithmetic problems ({GRPO_DEMO_CONFIG.name})")
    p = prepare("grpo", cfg, log)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = cfg.rollout.max_new_tokens

    sets = heldout_problems(heldout)
    unseen = [r for kind in UNSEEN for r in sets[kind]]
    kinds = [r["split"] for r in unseen]

    def measure(when: str) -> tuple[MathEvalResult, MathEvalResult]:
        held = evaluate_math(p.model, p.tok, unseen, max_new_tokens=tokens)
        inside = evaluate_math(p.model, p.tok, sets["in_template"], max_new_tokens=tokens)
        gc.collect()
        give_back_freed_memory()  # the sampler's packed weights and cache: training (or the report) runs without them
        by = accuracy_by_kind(held, kinds)
        log(f"      {when}: held-out templates {held.accuracy:.3f} (new phrasing {by['new_phrasing']:.3f}, new "
            f"scenario {by['new_scenario']:.3f}), in-template {inside.accuracy:.3f} "
            f"({held.seconds + inside.seconds:.0f}s)")  # fmt: skip
        return held, inside

    stage(2, f"before training: greedy answers to {len(unseen)} problems of held-out templates and "
             f"{len(sets['in_template'])} in-template")  # fmt: skip
    before, inside_before = measure("before")

    stage(3, "training (GRPO: sample, verify, update)")
    result = fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, log=log)

    stage(4, "after training: the same held-out problems")
    after, inside_after = measure("after")
    change, inside_change = paired_change(before, after), paired_change(inside_before, inside_after)
    log(f"      held-out templates: change {change['change']:+.3f} (McNemar p = {change['p_value']:.3g}); "
        f"in-template {inside_change['change']:+.3f} (p = {inside_change['p_value']:.3g})")  # fmt: skip
    by_before, by_after = accuracy_by_kind(before, kinds), accuracy_by_kind(after, kinds)

    stage(5, "writing the report")
    steps = [h for h in result.history if "seconds_per_step" in h]
    mean = lambda key: statistics.mean(h[key] for h in steps) if steps else float("nan")  # noqa: E731
    summary = {
        "model": cfg.model.name,
        "method": f"grpo ({cfg.rollout.prompts_per_step} prompts x {cfg.rollout.samples_per_prompt} samples, "
        f"reward: math verifier, lr {cfg.train.learning_rate:g})",
        "mixed precision": p.accelerator.mixed_precision,
        "training prompts seen": result.steps * cfg.rollout.prompts_per_step,
        "optimizer steps": result.steps,
        "seconds per step": round(mean("seconds_per_step"), 1),
        "  of which generate / reward / train": f"{mean('time/generate'):.1f} / {mean('time/reward'):.2f} / "
        f"{mean('time/train'):.1f}",
        "training seconds": round(result.wall_seconds, 1),
        "peak memory (MB, RSS)": round(result.peak_memory_mb),
        "held-out templates: accuracy before": round(before.accuracy, 4),
        "held-out templates: accuracy after": round(after.accuracy, 4),
        "held-out templates: change (points)": round(100 * change["change"], 1),
        "  new phrasing of a trained scenario: before / after": f"{by_before['new_phrasing']:.3f} / "
        f"{by_after['new_phrasing']:.3f}",
        "  new scenario: before / after": f"{by_before['new_scenario']:.3f} / {by_after['new_scenario']:.3f}",
        "in-template: accuracy before": round(inside_before.accuracy, 4),
        "in-template: accuracy after": round(inside_after.accuracy, 4),
        "in-template: change (points)": round(100 * inside_change["change"], 1),
        "total wall seconds": round(time.time() - t0, 1),
        "peak resident memory of the whole demo (MB)": round(peak_rss_mb()),
    }
    gens = [{"prompt": b["prompt"] if isinstance(b["prompt"], str) else b["prompt"][-1]["content"],
             "before": _answer(b), "after": _answer(a)}
            for b, a in list(zip(before.records, after.records))[:8]]  # fmt: skip
    report = write_run_report(
        out,
        "alignkit demo: GRPO with a verifiable reward on the embedded SmolLM2-135M-Instruct",
        summary,
        None,
        gens,
        RL_PLOTS,
        notes=[f"Config: {out / 'config.yaml'}; metrics: {out / 'metrics.jsonl'}; model: {result.model_dir}", LIMITS],
        sections=accuracy_section(before, after, change, "held-out templates: phrasings the training never saw")
        + accuracy_section(inside_before, inside_after, inside_change, "in-template: new problems, trained phrasings"),
    )
    full = {**summary, "before": before.summary(), "after": after.summary(), "change": change,
            "by_kind_before": by_before, "by_kind_after": by_after, "in_template_before": inside_before.summary(),
            "in_template_after": inside_after.summary(), "in_template_change": inside_change}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(full, indent=1))
    log(f"report: {report} (total {time.time() - t0:.0f}s, peak resident memory {peak_rss_mb():.0f} MB)")
    return full


def paired_change(before: MathEvalResult, after: MathEvalResult) -> dict:
    """Accuracy change on the same problems, with McNemar's exact test (statsmodels) on the discordant pairs."""
    from statsmodels.stats.contingency_tables import mcnemar

    b = [r["rewards"][0] == 1.0 for r in before.records]
    a = [r["rewards"][0] == 1.0 for r in after.records]
    table = [[sum(x and y for x, y in zip(b, a)), sum(x and not y for x, y in zip(b, a))],
             [sum(y and not x for x, y in zip(b, a)), sum(not x and not y for x, y in zip(b, a))]]  # fmt: skip
    test = mcnemar(table, exact=True)
    return {"change": after.accuracy - before.accuracy, "fixed": table[1][0], "broken": table[0][1],
            "p_value": float(test.pvalue)}  # fmt: skip


def accuracy_section(
    before: MathEvalResult, after: MathEvalResult, change: dict, title: str = "held-out problems"
) -> list:
    """Report blocks: accuracy on ``title``'s problems before and after, per category, and the change with
    McNemar's test."""
    rows = [["accuracy", f"{before.accuracy:.3f} [{before.interval[0]:.3f}, {before.interval[1]:.3f}]",
             f"{after.accuracy:.3f} [{after.interval[0]:.3f}, {after.interval[1]:.3f}]"]]  # fmt: skip
    for cat in before.per_category:
        rows.append([cat, f"{before.per_category[cat]['accuracy']:.3f}",
                     f"{after.per_category.get(cat, {}).get('accuracy', float('nan')):.3f}"])  # fmt: skip
    rows += [
        ["no answer found", f"{before.no_answer:.3f}", f"{after.no_answer:.3f}"],
        ["mean completion length (tokens)", f"{before.mean_length:.1f}", f"{after.mean_length:.1f}"],
        ["cut at the token limit", f"{before.truncated:.3f}", f"{after.truncated:.3f}"],
    ]
    return [
        Heading(f"Accuracy on {title} (greedy, {before.n} problems the training never saw)"),
        Table(["", "before", "after"], rows),
        Text(
            f"Change: {100 * change['change']:+.1f} points ({change['fixed']} problems fixed, {change['broken']} "
            f"broken; McNemar exact p = {change['p_value']:.3g}). Intervals are 95% Wilson intervals."
        ),  # fmt: skip
    ]


def _answer(record: dict) -> str:
    mark = "correct" if record["rewards"][0] == 1.0 else f"wrong (gold {record['gold']})"
    return f"{record['completions'][0]} [{mark}]"
