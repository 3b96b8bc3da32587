"""The cost of environments in the rollout: GRPO steps with calculator episodes vs single-turn GRPO, same prompts.

    .venv/bin/python bench/env_overhead.py [--steps 3] [--prompts 8] [--samples 4]

Both arms train the embedded SmolLM2-135M-Instruct with LoRA on the same prompt records (the tool demo's training
problems, the opening messages of the calculator environment with its two worked calls, so the prompts are the
same length), at the same temperature, for ``--steps`` steps. The single-turn arm samples one completion of up to
``max_tokens_per_turn`` x ``max_turns`` tokens per prompt; the tool arm samples episodes (up to ``max_turns`` turns
of ``max_tokens_per_turn`` tokens with tool results between them). Reported per arm: seconds per step and per
phase, tokens the model generated per step, and seconds per 1000 generated tokens (generation alone and the whole
step): the environment's overhead at equal tokens is the ratio of the last two between the arms. Run it alone on
the machine; the CPU flags are printed with the result.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/512"


def run_arm(tools: bool, steps: int, prompts: int, samples: int, out: Path) -> dict:
    from alignkit.train import make_config, run

    common = [f"train.max_steps={steps}", f"rollout.prompts_per_step={prompts}",
              f"rollout.samples_per_prompt={samples}", "method.dynamic_sampling=false", f"train.output_dir={out}",
              "train.seed=0"]  # fmt: skip
    if not tools:  # the same opening messages, one turn as long as the episode's turns together
        common += ["rollout.environment=bench_env_single:OneTurn", "rollout.max_turns=1",
                   "rollout.max_tokens_per_turn=144", "rollout.max_new_tokens=144"]  # fmt: skip
    cfg = make_config("grpo", str(ROOT / "configs/grpo_tools.yaml"), common)
    rows = [r for r in run("grpo", cfg, log=lambda *a, **k: None).history if "loss" in r]
    mean = lambda k: statistics.mean(r.get(k, 0.0) for r in rows)  # noqa: E731
    tokens = mean("generation/tokens_per_second") * mean("time/generate")
    return {
        "seconds_per_step": round(mean("seconds_per_step"), 2),
        "generate_seconds": round(mean("time/generate"), 2),
        "train_seconds": round(mean("time/train"), 2),
        "generated_tokens_per_step": round(tokens),
        "generate_seconds_per_1k_tokens": round(1000 * mean("time/generate") / tokens, 3),
        "step_seconds_per_1k_tokens": round(1000 * mean("seconds_per_step") / tokens, 3),
        "turns": round(mean("episode/turns"), 2),
        "tool_calls_per_step": round(mean("tools/calls"), 1),
        "reward": round(mean("reward/mean"), 3),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench/results/env_overhead.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    with tempfile.TemporaryDirectory() as tmp:
        single = run_arm(False, args.steps, args.prompts, args.samples, Path(tmp) / "single")
        tools = run_arm(True, args.steps, args.prompts, args.samples, Path(tmp) / "tools")
    result = {
        "machine": f"{platform.machine()}, cpu flags: {cpu_flags()}",
        "command": "python bench/env_overhead.py " + " ".join(argv or sys.argv[1:]),
        "single_turn": single,
        "calculator_episodes": tools,
        "overhead_generate_per_token": round(
            tools["generate_seconds_per_1k_tokens"] / single["generate_seconds_per_1k_tokens"], 2
        ),
        "overhead_step_per_token": round(tools["step_seconds_per_1k_tokens"] / single["step_seconds_per_1k_tokens"], 2),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
