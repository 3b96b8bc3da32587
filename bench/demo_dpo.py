"""Variants of the DPO demo (`make demo`), each run in full and recorded with its goals in bench/results/demo_dpo.json.

    .venv/bin/python bench/demo_dpo.py --name lr5e-5 --set train.learning_rate=5e-5 [--set method.beta=0.5 ...]
    .venv/bin/python bench/demo_dpo.py --name lr3e-4 --from-run runs/demo     # record a run made by `alignkit demo`

A row holds the overrides, every goal (win rate over the base by the hh-rlhf judge with its interval, KL on
samples, loops, refusals, wall time) met or not, the judge's held-out accuracy, the held-out pairwise accuracy
before/after, and whether the judge was trained in the run or reused from the cache (the first run on a machine
trains it: about 4 of the demo's minutes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def row_of(name: str, overrides: list[str], run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    m = json.loads((run_dir / "eval_vs_base.json").read_text())
    win = m.get("reward", {}).get("win_rate", {})
    return {
        "name": name,
        "overrides": overrides,
        "goals_met": sum(g["met"] for g in s["goals"]),
        "goals": {g["goal"]: {"value": g["value"], "met": g["met"], "detail": g["detail"]} for g in s["goals"]},
        "win_rate": win.get("rate"),
        "win_rate_ci95_bootstrap": win.get("bootstrap"),
        "win_rate_per_category": {c: v["rate"] for c, v in (win.get("per_category") or {}).items()},
        "kl_per_sequence": m["kl"]["full"]["sequence"]["mean"],
        "length_tokens": {
            "base": m["reference_text"]["length_tokens"]["mean"],
            "trained": m["policy_text"]["length_tokens"]["mean"],
        },
        "judge": {name: {k: v for k, v in info.items() if k != "recipe"} for name, info in s["judge"].items()},
        "by_judge": {
            name: {
                "win_rate": j["win_rate"]["rate"],
                "ci95": j["win_rate"]["bootstrap"],
                "sanity": j["sanity"]["accuracy"],
            }
            for name, j in (m.get("by_judge") or {}).items()
        },
        "judge_sanity": m.get("judge_sanity"),
        "mean_logp_accuracy": [s["mean_logp_accuracy_before"], s["mean_logp_accuracy_after"]],
        "implicit_reward_accuracy_after": s["implicit_reward_accuracy_after"],
        "wall_seconds": s["total wall seconds (incl. judge, scoring, generation, evaluation)"],
        "optimizer_steps": s["optimizer steps"],
        "judge_trained_in_this_run": any(info.get("trained_in_this_run") for info in s["judge"].values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--from-run", default=None, help="record this finished `alignkit demo` run instead of running")
    ap.add_argument("--output-dir", default="/tmp/alignkit-bench-demo")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "demo_dpo.json"))
    args = ap.parse_args()
    run_dir = Path(args.from_run or args.output_dir)
    if args.from_run is None:
        from alignkit.recipes.demo_dpo import run_demo

        run_demo(str(run_dir), args.overrides)
    row = row_of(args.name, args.overrides, run_dir)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
