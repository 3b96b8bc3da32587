"""Peak resident memory of each training step of a demo recipe (VmHWM, reset after every step; Linux only).

    .venv/bin/python bench/memory_by_step.py --cache 64 --steps 16            # the DPO demo recipe
    .venv/bin/python bench/memory_by_step.py --cache 1024 --steps 16 --set train.reuse_cpu_memory=false

``--cache``: entries of oneDNN's and ideep's kernel caches (``models.cpu_memory.bound_onednn_caches``; 1024 is
oneDNN's default). Run two settings side by side or one after another on an idle machine; compare the steps.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--method", choices=("dpo", "grpo"), default="dpo")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--output-dir", default="/tmp/alignkit-bench-memory")
    args = ap.parse_args()

    from alignkit.models.cpu_memory import bound_onednn_caches

    bound_onednn_caches(args.cache)  # before any kernel runs
    from alignkit.recipes.demo_dpo import DEMO_CONFIG
    from alignkit.recipes.demo_grpo import GRPO_DEMO_CONFIG
    from alignkit.train.loop import fit
    from alignkit.train.run import make_config, prepare

    def phase_peak(what: str) -> None:
        hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
        print(f"{what:12s} {hwm / 1024:7.0f} MB peak  {time.perf_counter() - t0:7.1f} s", flush=True)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM

    config = DEMO_CONFIG if args.method == "dpo" else GRPO_DEMO_CONFIG
    sets = [f"train.output_dir={args.output_dir}", "train.overwrite=true", f"train.max_steps={args.steps}",
            *args.overrides]  # fmt: skip
    cfg = make_config(args.method, str(config), sets)
    t0 = time.perf_counter()
    p = prepare(args.method, cfg, lambda *a: None)
    phase_peak("prepared")
    fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, log=lambda *a: None,
        callbacks=[lambda state, metrics: phase_peak(f"step {state.step}")])  # fmt: skip
    phase_peak("end")


if __name__ == "__main__":
    main()
