"""What each speed-up buys: one DPO step on a fixed batch of real pairs, the optimizations added one at a time.

    .venv/bin/python bench/ablation.py [--steps 6] [--mode full|lora] [--dtype bf16|fp32] [--ops]

Every case trains the embedded SmolLM2-135M-Instruct on the same 4 hh-rlhf pairs (max length 256, reference
log-probs precomputed, the fused log-prob head) for ``--steps`` timed steps after 2 warm-up steps, each case in its
own process (the malloc setting is process-wide). Cases, cumulative:

1. ``baseline``: two padded rows per pair (TRL's layout), per-tensor AdamW, glibc malloc defaults
2. ``+reuse-memory``: ``train.reuse_cpu_memory`` (``alignkit.models.cpu_memory``)
3. ``+fused-adamw``: one fused AdamW kernel
4. ``+prefix-sharing``: one padded row per pair, prompt encoded once
5. ``+packing``: all pairs in one unpadded row, attention per pair (alignkit's default)

Prints median seconds/step, tokens/s (the same token count in every layout), page faults per step, MFU (model FLOPs
the layout needs / time / this machine's matmul peak measured in the same process, ``bench/mfu.py``) and the
phases (forward, backward, clip, optimizer). ``--ops`` adds, for the last case, the time per kind of operator
(decoder matmuls, LM-head matmuls, attention, the rest), measured op by op with a dispatch hook.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"
CASES = ["baseline", "+reuse-memory", "+fused-adamw", "+prefix-sharing", "+packing"]


def one(case: str, mode: str, dtype: str, steps: int, ops: bool, data: str) -> dict:
    level = CASES.index(case)
    import torch
    from mfu import dpo_step_flops, measure_peaks, model_shape
    from torch.utils._python_dispatch import TorchDispatchMode

    from alignkit.models.cpu_memory import keep_freed_memory
    from alignkit.train import make_config
    from alignkit.train.run import prepare

    if level >= 1:
        keep_freed_memory()
    overrides = [
        f"data.train={data}",
        "data.max_length=256",
        "data.on_invalid=skip",
        "data.max_examples=40",
        f"model.dtype={dtype}",
        "model.device=cpu",
        f"train.output_dir={tempfile.mkdtemp(prefix='alignkit-ablation-')}",
        "train.batch_size=4",
        "train.reuse_cpu_memory=false",  # set above, per case
        f"train.prefix_sharing={level >= 3}",
        f"train.packing={level >= 4}",
        "method.reference_cache=false",
    ]
    if mode == "lora":
        overrides.append("lora.r=16")
    p = prepare("dpo", make_config("dpo", overrides=overrides), log=lambda *a: None)
    method = p.method
    train, _ = method.setup(p.model, p.train_items, p.eval_items, p.accelerator)
    module = method.wrap(p.model).train()
    params = [q for q in p.model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6, fused=True if level >= 2 else None, foreach=None)
    items = train[8:12]
    batch = method.collate(items)
    phases: dict[str, list[float]] = {}

    def step() -> None:
        t = [time.perf_counter()]
        with p.accelerator.autocast():
            losses, _ = method.loss(module, batch)
            t.append(time.perf_counter())
            losses.mean().backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        for name, a, b in zip(("forward", "backward", "clip", "optimizer"), t, t[1:]):
            phases.setdefault(name, []).append(b - a)

    for _ in range(2):
        step()
    phases.clear()
    times, faults = [], []
    for _ in range(steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    median = sorted(times)[len(times) // 2]
    peak = measure_peaks()["bf16" if p.accelerator.mixed_precision == "bf16" else "fp32"]
    shape = model_shape(p.model)
    sizes = [[len(x.prompt_ids), len(x.chosen_ids), len(x.rejected_ids)] for x in items]
    flops = dpo_step_flops(shape, sizes, "shared" if level >= 3 else "plain", mode == "lora", live_reference=False)
    result = {
        "case": case,
        "mode": mode,
        "precision": dtype,
        "seconds_per_step": median,
        "tokens_per_second": method.tokens(batch) / median,
        "page_faults_per_step": sorted(faults)[len(faults) // 2],
        "mfu_percent": 100 * flops / median / (peak * 1e9),
        "matmul_peak_gflops": peak,
        "batch_shape": list(batch["input_ids"].shape),
        "phases_s": {k: sorted(v)[len(v) // 2] for k, v in phases.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if ops:
        kinds: Counter = Counter()
        vocab = p.model.get_output_embeddings().weight.shape[0]

        class OpTimer(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                t0 = time.perf_counter()
                out = func(*args, **(kwargs or {}))
                kinds[_kind(func, args, vocab)] += time.perf_counter() - t0
                return out

        with OpTimer():
            step()
        result["ops_s"] = dict(kinds.most_common())
    return result


def _kind(func, args, vocab: int) -> str:
    name = str(func)  # e.g. aten.mm.default
    if name.split(".")[1] in ("mm", "addmm", "bmm", "matmul", "linear"):
        return "matmul (LM head)" if any(vocab in getattr(a, "shape", ()) for a in args) else "matmul (decoder)"
    if "scaled_dot_product" in name:
        return "attention"
    if "adam" in name:
        return "optimizer"
    return "other (norms, activations, casts, copies)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--mode", choices=("full", "lora"), default="full")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--ops", action="store_true", help="operator-time breakdown of the last case")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one(args.case, args.mode, args.dtype, args.steps, args.ops, args.data)))
        return
    rows, cases = [], args.cases.split(",")
    print(f"DPO step, embedded model, 4 hh-rlhf pairs, max length 256, {args.mode}, {args.dtype}")
    print(f"{'case':18s} {'s/step':>7s} {'tok/s':>6s} {'faults':>8s} {'MFU':>6s}  phases (fwd/bwd/clip/opt s)")
    for case in cases:
        cmd = [sys.executable, __file__, "--case", case, "--mode", args.mode, "--dtype", args.dtype]
        cmd += ["--steps", str(args.steps), "--data", args.data] + (["--ops"] if args.ops and case == cases[-1] else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        ph = "/".join(f"{v:.2f}" for v in r["phases_s"].values())
        print(
            f"{case:18s} {r['seconds_per_step']:7.2f} {r['tokens_per_second']:6.0f} {r['page_faults_per_step']:8d} "
            f"{r['mfu_percent']:5.1f}%  {ph}",
            flush=True,
        )
    if "ops_s" in rows[-1]:
        total = sum(rows[-1]["ops_s"].values())
        print(f"operator time of one step ({rows[-1]['case']}), {total:.2f} s in operators:")
        for kind, seconds in rows[-1]["ops_s"].items():
            print(f"  {kind:42s} {seconds:6.2f} s  {100 * seconds / total:5.1f}%")
    speedup = rows[0]["seconds_per_step"] / rows[-1]["seconds_per_step"]
    print(f"speed-up of the last case over the first: {speedup:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
