"""Reward model on real hh-rlhf pairs with the embedded backbone: train on the first 1200 pairs of
../shared/data/hh-rlhf/harmless-base-test-part1.jsonl.gz, evaluate on the last 300 (read by path, never copied).

    .venv/bin/python bench/rm_hh.py [--set lora.r=32 --set train.epochs=2 ...] [--out bench/results/rm_hh.json]

Runs ``configs/rm_hh.yaml`` (LoRA r=16, max length 256, 1 epoch) with any overrides and prints held-out
accuracy, mean margin, Brier score, ECE and wall time. The spec's bar for hh-rlhf is accuracy > 65%.
The untrained model's own preference (mean per-token log-prob of chosen > rejected) is printed as a baseline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "rm_hh.json"))
    ap.add_argument("--output-dir", default="/tmp/alignkit-bench-rm-hh")
    ap.add_argument("--baseline", action="store_true", help="also score the held-out pairs by the base LM's log-probs")
    args = ap.parse_args()

    from alignkit.train import make_config, run

    overrides = [
        f"data.train={DATA}[:1200]",
        f"data.eval={DATA}[1200:]",
        f"train.output_dir={args.output_dir}",
        "train.overwrite=true",
        *args.overrides,
    ]
    cfg = make_config("rm", str(REPO / "configs" / "rm_hh.yaml"), overrides)
    t0 = time.time()
    result = run("rm", cfg)
    wall = time.time() - t0
    ev = result.eval_metrics
    row = {
        "overrides": args.overrides,
        "train_pairs_used": result.steps * cfg.train.batch_size * cfg.train.grad_accum,
        "eval_accuracy": ev["eval/rewards/accuracies"],
        "eval_margin": ev["eval/rewards/margins"],
        "eval_brier": ev["eval/calibration/brier"],
        "eval_ece": ev["eval/calibration/ece"],
        "eval_loss": ev["eval/loss"],
        "wall_seconds": wall,
        "peak_rss_mb": result.peak_memory_mb,
        "steps": result.steps,
    }
    if args.baseline:
        row["base_lm_mean_logp_accuracy"] = _baseline(cfg)
    print(json.dumps(row, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    print(
        f"hh-rlhf reward model: held-out accuracy {row['eval_accuracy']:.3f} (bar > 0.65), ECE {row['eval_ece']:.3f}, "
        f"Brier {row['eval_brier']:.3f}; wall {wall / 60:.1f} min; peak RSS {row['peak_rss_mb']:.0f} MB"
    )


def _baseline(cfg) -> float:
    """Held-out accuracy of the untrained causal LM ranking by mean per-token log-prob."""
    from alignkit.data import Tokenizer, read_records, to_pairwise, tokenize_pairs, validate_records
    from alignkit.eval.pairwise import score_pairs
    from alignkit.models import load_model, load_tokenizer

    hf = load_tokenizer(cfg.model.name)
    tok = Tokenizer(hf)
    examples, _ = validate_records(read_records(cfg.data.eval), to_pairwise, "skip")
    pairs, _ = tokenize_pairs(examples, tok, cfg.data.max_length, None)
    return score_pairs(load_model(cfg.model.name), pairs, tok.pad_id).mean_logp_accuracy


if __name__ == "__main__":
    main()
