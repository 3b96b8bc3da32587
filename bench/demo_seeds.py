"""A demo recipe over several training seeds: each seed a full `alignkit demo` run in its own process (so each peak
RSS is its own), its headline numbers recorded, and the spread over seeds.

    .venv/bin/python bench/demo_seeds.py --method grpo --name "phrasing split" --seeds 0 1 2
    .venv/bin/python bench/demo_seeds.py --method dpo --name "the recipe" --seeds 0 1 2 [--set method.beta=0.2]
    .venv/bin/python bench/demo_seeds.py --method grpo --name X --from-runs /tmp/a /tmp/b   # record finished runs

Appends one entry to bench/results/demo_{method}_seeds.json: the overrides, one row per seed and, per headline
number, mean / sd / min / max over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def grpo_row(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {
        "held_out_before": s["held-out templates: accuracy before"],
        "held_out_after": s["held-out templates: accuracy after"],
        "held_out_change": s["change"]["change"], "held_out_p": s["change"]["p_value"],
        "new_phrasing": [s["by_kind_before"]["new_phrasing"], s["by_kind_after"]["new_phrasing"]],
        "new_scenario": [s["by_kind_before"]["new_scenario"], s["by_kind_after"]["new_scenario"]],
        "in_template_before": s["in-template: accuracy before"], "in_template_after": s["in-template: accuracy after"],
        "in_template_change": s["in_template_change"]["change"], "in_template_p": s["in_template_change"]["p_value"],
        "no_answer_after": s["after"].get("no_answer"), "length_after": s["after"].get("mean_length"),
        "peak_rss_mb": s.get("peak resident memory of the whole demo (MB)"), "wall_seconds": s["total wall seconds"],
    }  # fmt: skip


def dpo_row(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    m = json.loads((run / "eval_vs_base.json").read_text())
    row = {
        "kl_per_sequence": m["kl"]["full"]["sequence"]["mean"],
        "loops": [m["reference_text"]["loop_rate"], m["policy_text"]["loop_rate"]],
        "goals_met": f"{sum(g['met'] for g in s['goals'])} of {len(s['goals'])}",
        "goals_not_met": [g["goal"] for g in s["goals"] if not g["met"]],
        "mean_logp_accuracy": [s["mean_logp_accuracy_before"], s["mean_logp_accuracy_after"]],
        "peak_rss_mb": s.get("peak resident memory of the whole demo (MB)"),
        "wall_seconds": s["total wall seconds (incl. judge, scoring, generation, evaluation)"],
    }
    if "safety" in m:
        row["over_refusal_benign"] = [m["safety"][k]["over_refusal_rate_benign"] for k in ("reference", "policy")]
    for name, j in (m.get("by_judge") or {}).items():
        key = "win_rate_" + name.replace(" + ", "_and_").replace("-", "_").replace(" ", "_")
        row[key] = j["win_rate"]["rate"]
        row[key + "_ci95"] = j["win_rate"]["bootstrap"]
        row[key + "_sanity"] = j["sanity"]["accuracy"]
    return row


def spread(rows: list[dict]) -> dict:
    out = {}
    for k, v in rows[0].items():
        if (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and all(isinstance(r.get(k), (int, float)) for r in rows)
        ):
            xs = [r[k] for r in rows]
            out[k] = {"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                      "min": min(xs), "max": max(xs)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=("dpo", "grpo"), required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--from-runs", nargs="*", default=None, help="record these finished runs (seed order) instead")
    ap.add_argument("--output-dir", default="/tmp/alignkit-bench-seeds")
    args = ap.parse_args()
    runs = [Path(r) for r in args.from_runs] if args.from_runs else []
    if not runs:
        for seed in args.seeds:
            run = Path(args.output_dir) / f"{args.method}-seed{seed}"
            sets = [a for o in [*args.overrides, f"train.seed={seed}"] for a in ("--set", o)]
            cmd = [str(REPO / ".venv" / "bin" / "alignkit"), "demo", "--method", args.method, "--output-dir", str(run),
                   "--overwrite", *sets]  # fmt: skip
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=sys.stderr)
            runs.append(run)
    row_of = grpo_row if args.method == "grpo" else dpo_row
    rows = [{"seed": seed, **row_of(run)} for seed, run in zip(args.seeds, runs)]
    entry = {"name": args.name, "overrides": args.overrides, "seeds": rows, "spread": spread(rows)}
    out = REPO / "bench" / "results" / f"demo_{args.method}_seeds.json"
    entries = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(entries + [entry], indent=1) + "\n")
    print(json.dumps(entry["spread"], indent=1))


if __name__ == "__main__":
    main()
