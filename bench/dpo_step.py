"""Seconds per DPO step on the embedded SmolLM2-135M-Instruct: real hh-rlhf pairs, 4 pairs per step,
max length 256, full fine-tuning vs LoRA, fp32 vs bf16 autocast, prefix sharing on vs off. Each configuration
runs in its own process so peak memory (RSS) is its own.

    .venv/bin/python bench/dpo_step.py [--steps 6] [--cases full:bf16:shared,full:bf16:plain]
        [--data ../shared/data/hh-rlhf/harmless-base-test-part1.jsonl.gz]

Tokens/s counts the non-padding tokens of the chosen and rejected sequences (prompt counted for both), the
same count in both layouts.

The first step (warm-up) is excluded from the timing. Reference log-probs are precomputed before training
(alignkit's default) and that time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"
CASES = "full:fp32:shared,full:bf16:shared,full:bf16:plain,lora:fp32:shared,lora:bf16:shared,lora:bf16:plain"


def one(mode: str, dtype: str, layout: str, steps: int, data: str) -> dict:
    from alignkit.data.jsonl import read_jsonl
    from alignkit.train import make_config, run

    out = tempfile.mkdtemp(prefix="alignkit-bench-")
    overrides = [
        f"data.train={data}",
        "data.max_length=256",
        "data.on_invalid=skip",
        f"data.max_examples={4 * steps + 8}",
        f"model.dtype={dtype}",
        "model.device=cpu",
        f"train.output_dir={out}",
        "train.batch_size=4",
        f"train.max_steps={steps}",
        "train.logging_steps=1",
        "train.learning_rate=1e-6",
        f"train.prefix_sharing={layout == 'shared'}",
        "method.reference_cache=false",
    ]
    if mode == "lora":
        overrides += ["lora.r=16"]
    t0 = time.time()
    result = run("dpo", make_config("dpo", overrides=overrides), log=lambda *a: None)
    rows = [r for r in read_jsonl(Path(out) / "metrics.jsonl") if "loss" in r][1:]
    step_s = sum(r["seconds_per_step"] for r in rows) / len(rows)
    train_s = sum(r["seconds_per_step"] for r in read_jsonl(Path(out) / "metrics.jsonl") if "loss" in r)
    return {
        "mode": mode,
        "dtype": dtype,
        "layout": layout,
        "seconds_per_step": step_s,
        "tokens_per_second": sum(r["tokens_per_second"] for r in rows) / len(rows),
        "peak_rss_mb": result.peak_memory_mb,
        "setup_seconds": result.wall_seconds - train_s,  # data, reference precompute, saving
        "total_seconds": time.time() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--cases", default=CASES, help="mode:dtype:layout,... (full|lora, fp32|bf16, shared|plain)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one(*args.case.split(":"), args.steps, args.data)))
        return
    rows = []
    for case in args.cases.split(","):
        mode, dtype, layout = case.split(":")
        proc = subprocess.run(
            [sys.executable, __file__, "--case", case, "--steps", str(args.steps), "--data", args.data],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{mode:5s} {dtype:5s} {layout:6s}  {r['seconds_per_step']:6.2f} s/step  "
            f"{r['tokens_per_second']:7.0f} tokens/s  "
            f"peak RSS {r['peak_rss_mb']:6.0f} MB  (setup {r['setup_seconds']:.0f} s)",
            flush=True,
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
