"""alignkit DPO throughput and memory across max length x batch size on the embedded SmolLM2-135M-Instruct.

    .venv/bin/python bench/scaling.py [--lengths 256,512,1024] [--batches 2,4,8] [--steps 4] [--mode full]
                                      [--dtype auto] [--select longest] [--layout plain|shared|packed]
                                      [--out bench/results/scaling.json]

Each (max length, batch) cell runs alignkit DPO in its own subprocess (the same child as bench/dpo_vs_trl.py, so
the settings match: file order, constant lr 1e-6, reference precomputed without the on-disk cache, no gradient
checkpointing, alignkit's default batch layout unless ``--layout``) for ``--steps`` optimizer steps; step 1 is
warm-up and not timed. Reported: seconds/step, tokens/s (chosen + rejected sequence tokens, the prompt counted for
each, as in bench/dpo_vs_trl.py), pairs/s, MFU against this machine's matmul peak measured at the start
(bench/mfu.py), peak RSS of the cell's process, and what the batches actually held: mean tokens per chosen /
rejected sequence and mean padded row length (each step's rows are padded to the longest; a prefix-shared row holds
prompt + chosen + rejected; a packed batch is one unpadded row of all its pairs), since max length is only an upper
bound.

Data: real hh-rlhf pairs (``--data``, read in place), invalid records skipped. ``--select longest`` (default) takes
the ``steps x batch`` longest pairs that fit in the cell's max length (kept in file order), so longer limits really
feed longer rows as far as the data allows; ``--select first`` takes the first pairs that fit. Nothing is truncated.
The full default grid takes roughly 20 minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpo_vs_trl import DEFAULT_DATA, REPO, derive, run_case  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "scaling.json"


def pair_lengths(data: str, model_dir: str) -> list[tuple[dict, int]]:
    """(raw record, alignkit tokens of prompt + longest completion) of every valid record, in file order."""
    from transformers import AutoTokenizer

    from alignkit.data import Tokenizer, read_records, to_pairwise
    from alignkit.data.formats import InvalidRecord

    tok = Tokenizer(AutoTokenizer.from_pretrained(model_dir))
    out = []
    for source, record in read_records(data):
        try:
            ex = to_pairwise(record, source)
        except InvalidRecord:
            continue
        prompt, chosen = tok.split(ex.prompt, ex.chosen)
        _, rejected = tok.split(ex.prompt, ex.rejected)
        out.append((record, len(prompt) + max(len(chosen), len(rejected))))
    return out


def choose(pairs: list[tuple[dict, int]], n: int, max_length: int, select: str) -> list[dict]:
    fits = [i for i, (_, length) in enumerate(pairs) if length <= max_length]
    if len(fits) < n:
        raise SystemExit(f"only {len(fits)} pairs fit in {max_length} tokens, {n} needed; lower --steps or --batches")
    if select == "longest":
        fits = sorted(sorted(fits, key=lambda i: -pairs[i][1])[:n])
    return [pairs[i][0] for i in fits[:n]]


def grid(args, lengths: list[int], batches: list[int], pairs: list, model_dir: str, peaks: dict, tmp: Path) -> list:
    """Runs every (max length, batch) cell; returns one row per cell."""
    rows = []
    for max_length in lengths:
        for batch in batches:
            path = tmp / f"pairs-{max_length}-{batch}.jsonl"
            chosen = choose(pairs, args.steps * batch, max_length, args.select)
            path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
            settings = {
                "model_dir": model_dir,
                "alignkit_data": str(path),
                "steps": args.steps,
                "batch_size": batch,
                "max_length": max_length,
                "lr": args.lr,
                "beta": 0.1,
                "seed": 42,
                "lora_r": 16,
                "lora_alpha": 32,
                "lora_dropout": 0.05,
                "lora_targets": "all-linear",
                "ref_batch_size": 8,
            }
            case = {
                "name": f"alignkit-{args.dtype}-{args.mode}-L{max_length}-B{batch}",
                "framework": "alignkit",
                "mode": args.mode,
                "precision": args.dtype,
                "reference": args.reference,
                "layout": args.layout,
            }
            raw = run_case(case, settings, args.timeout)
            d = derive(case, raw, peaks)
            timed = raw["pairs"][1:] or raw["pairs"]  # [[prompt, chosen, rejected] tokens per pair] per step
            shared = raw["layout"] in ("shared", "packed")
            row = {
                "max_length": max_length,
                "batch": batch,
                "precision": d["precision"],
                "seconds_per_step": d["seconds_per_step"],
                "tokens_per_second": d["tokens_per_second"],
                "pairs_per_second": d["pairs_per_second"],
                "mfu_percent": d["mfu_percent"],
                "peak_rss_mb": d["peak_rss_mb"],
                "layout": raw["layout"],
                "mean_sequence_tokens": statistics.mean(p + x for step in timed for p, c, r in step for x in (c, r)),
                "mean_padded_row_length": statistics.mean(
                    sum(p + c + r for p, c, r in step)  # packed: one row, no padding
                    if raw["layout"] == "packed"
                    else max((p + c + r) if shared else (p + max(c, r)) for p, c, r in step)
                    for step in timed
                ),
                "setup_s": d["setup_s"],
                "precompute_s": d["precompute_s"],
                "raw": raw,
            }
            rows.append(row)
            print(
                f"L={max_length:5d} B={batch:2d}  {row['seconds_per_step']:7.2f} s/step  "
                f"{row['tokens_per_second']:7.0f} tokens/s  MFU {row['mfu_percent']:5.1f}%  "
                f"peak RSS {row['peak_rss_mb']:6.0f} MB  sequences {row['mean_sequence_tokens']:.0f} tokens, "
                f"{row['layout']} rows of {row['mean_padded_row_length']:.0f}",
                flush=True,
            )

    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="256,512,1024")
    ap.add_argument("--batches", default="2,4,8", help="pairs per step")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per cell; step 1 is not timed")
    ap.add_argument("--mode", choices=("full", "lora"), default="full")
    ap.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto", help="alignkit model.dtype")
    ap.add_argument("--reference", choices=("precompute", "live"), default="precompute")
    ap.add_argument("--select", choices=("longest", "first"), default="longest")
    ap.add_argument("--layout", choices=("plain", "shared", "packed"), help="alignkit batch layout (unset: default)")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per cell")
    args = ap.parse_args()

    from mfu import measure_peaks

    from alignkit.models.embedded import embedded_model_dir

    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    peaks = measure_peaks()
    print(
        f"matmul peak ({peaks['threads']} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    model_dir = str(embedded_model_dir())
    pairs = pair_lengths(args.data, model_dir)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        rows = grid(args, lengths, batches, pairs, model_dir, peaks, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n### alignkit DPO scaling ({args.mode}, model.dtype={args.dtype}, reference {args.reference})\n")
    print(
        "| max length | batch (pairs) | s/step | tokens/s | pairs/s | MFU % | peak RSS MB | mean sequence tokens "
        "| layout | mean padded row length |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['max_length']} | {r['batch']} | {r['seconds_per_step']:.2f} | {r['tokens_per_second']:.0f} "
            f"| {r['pairs_per_second']:.2f} | {r['mfu_percent']:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['mean_sequence_tokens']:.0f} | {r['layout']} | {r['mean_padded_row_length']:.0f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "timeout")}
    out.write_text(json.dumps({"settings": settings, "matmul_peak_gflops": peaks, "cells": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
