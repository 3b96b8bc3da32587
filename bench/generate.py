"""Sampling speed: alignkit's sampler vs ``transformers.generate(num_return_sequences=...)``, side by side.

    .venv/bin/python bench/generate.py [--prompts 8] [--n 8] [--max-new-tokens 128] [--dtypes fp32,bf16] [--rounds 1]

Both sample the same prompts (the demo prompts through the chat template, left-padded for HF), n samples per
prompt, temperature 1, top-p 1, no top-k (HF's default top-k of 50 is turned off), at most ``--max-new-tokens``
tokens, from the embedded SmolLM2-135M-Instruct, in the same precision (fp32, or bf16 autocast: both run under
``torch.autocast("cpu", bfloat16)`` with fp32 weights, as in training). Each case runs in its own process, after one
warm-up call on two prompts.

tokens/s counts the real generated tokens (up to and including EOS; HF keeps generating pads for finished rows
until the last row ends, those are not counted) over the wall seconds of the whole call (prefill included).
The sampler's MFU: the FLOPs the work needs (each prompt prefilled once: 2 x decoder params x prompt tokens; each
generated token: 2 x (decoder + LM head params) plus attention over its context, 4 x layers x heads x head_dim x
context) over the seconds, over this machine's measured matmul peak of the precision (``bench/mfu.py``).
Run it alone: another process on the 2 cores distorts the timing several-fold.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def prompts(k: int) -> list[str]:
    lines = (ROOT / "src/alignkit/resources/demo_prompts.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip()][:k]


def run_case(case: str, dtype: str, k: int, n: int, max_new: int) -> dict:
    import torch

    from alignkit.data import Tokenizer
    from alignkit.generation.sampler import Sampler, SamplingParams
    from alignkit.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model, hf = load_model(None), load_tokenizer(None)
    tok = Tokenizer(hf)
    sampler = Sampler(model, tok, max_rows=max(64, k * n))
    ids = [sampler.prompt_ids(p) for p in prompts(k)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def hf_generate(batch: list[list[int]]) -> list[list[int]]:
        width = max(map(len, batch))
        input_ids = torch.tensor([[tok.pad_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = model.generate(
            input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
            max_new_tokens=max_new, num_return_sequences=n, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id,
        )[:, width:].tolist()  # fmt: skip
        return [r[: r.index(tok.eos_id) + 1] if tok.eos_id in r else r for r in out]

    def ours(batch: list[list[int]]) -> list[list[int]]:
        params = SamplingParams(n=n, max_new_tokens=max_new, temperature=1.0)
        return [c.token_ids for group in sampler.sample(batch, params, list(range(len(batch)))) for c in group]

    generate = hf_generate if case == "hf" else ours
    with torch.no_grad(), autocast:
        generate(ids[:2])  # warm-up
        t0 = time.perf_counter()
        rows = generate(ids)
        seconds = time.perf_counter() - t0
    tokens = sum(map(len, rows))
    return {
        "case": case,
        "dtype": dtype,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "prompt_tokens": [len(p) for p in ids],
        "completion_lengths": [len(r) for r in rows],
        "row_steps": sampler.stats.row_steps if case == "alignkit" else None,
    }


def needed_flops(result: dict, shape: dict, n: int) -> float:
    """FLOPs the sampling work needs: prompts prefilled once, each real token decoded once (see the docstring)."""
    body, head, attn = shape["body_params"], shape["head_params"], shape["n_layers"] * shape["attn_width"]
    prompts_ = result["prompt_tokens"]
    flops = sum(2 * body * p + 2 * attn * p * p for p in prompts_)  # prefill (attention over the causal triangle)
    lengths = result["completion_lengths"]
    for i, length in enumerate(lengths):
        p = prompts_[i // n]
        flops += length * 2 * (body + head) + sum(4 * attn * (p + t) for t in range(length))
    return float(flops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--cases", default="hf,alignkit")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench/results/generate.json"))
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.dtype, args.prompts, args.n, args.max_new_tokens)))
        return

    import torch
    from mfu import measure_peaks, model_shape

    from alignkit.models import load_model

    peaks = measure_peaks()
    shape = model_shape(load_model(None))
    results = []
    for _ in range(args.rounds):
        for dtype in args.dtypes.split(","):
            for case in args.cases.split(","):
                cmd = [sys.executable, __file__, "--case", case, "--dtype", dtype, "--prompts", str(args.prompts),
                       "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(f"{case} {dtype} failed:\n{proc.stderr[-2000:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["mfu"] = needed_flops(r, shape, args.n) / r["seconds"] / (peaks[dtype] * 1e9)
                results.append(r)
                print(f"{case:9s} {dtype}: {r['tokens']} tokens in {r['seconds']:.1f} s = "
                      f"{r['tokens_per_second']:.0f} tokens/s, MFU {100 * r['mfu']:.1f}%", flush=True)  # fmt: skip
    summary = {}
    for dtype in args.dtypes.split(","):
        best = {c: max((r for r in results if r["case"] == c and r["dtype"] == dtype),
                       key=lambda r: r["tokens_per_second"], default=None) for c in ("hf", "alignkit")}  # fmt: skip
        if best["hf"] and best["alignkit"]:
            ratio = best["alignkit"]["tokens_per_second"] / best["hf"]["tokens_per_second"]
            summary[dtype] = {"hf_tokens_per_second": best["hf"]["tokens_per_second"],
                              "alignkit_tokens_per_second": best["alignkit"]["tokens_per_second"],
                              "ratio": ratio, "alignkit_mfu": best["alignkit"]["mfu"]}  # fmt: skip
            print(f"{dtype}: alignkit / transformers.generate = {ratio:.2f}x (goal >= 3x); "
                  f"sampler MFU {100 * best['alignkit']['mfu']:.1f}% of the {dtype} matmul peak "
                  f"({peaks[dtype]:.0f} GFLOP/s)")  # fmt: skip
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    import transformers

    out = {
        "settings": {"prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens, "temperature": 1.0},
        "machine": {
            "cpu": model_name,
            "avx512_bf16": "avx512_bf16" in cpu,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "matmul_peak_gflops": peaks,
        },  # fmt: skip
        "results": results,
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
