"""Reward model on real hh-rlhf pairs with the embedded backbone: train on the first 1200 pairs of
../shared/data/hh-rlhf/harmless-base-test-part1.jsonl.gz, evaluate on the last 300 (read by path, never copied).

    .venv/bin/python bench/rm_hh.py --name full-lr1e-5 [--set lora=null --set train.learning_rate=1e-5 ...]
        [--sft-first] [--aggregate mean] [--out bench/results/rm_hh.json]

Runs ``configs/rm_hh.yaml`` with any overrides and appends one row to the results file: held-out accuracy with
its 95% Wilson interval (300 pairs: about +-5 points), mean margin, Brier score, ECE, wall time and the CPU's
native-bf16 flag. ``--sft-first`` first fine-tunes the backbone on the chosen responses of the same 1200 training
pairs (LoRA, merged; the spec starts the reward model from the SFT model) and counts that time in the wall time.
Ensembles (``--set method.ensemble_size=3``) are scored on the held-out pairs through ``alignkit score``'s path
with ``--aggregate``. ``--baseline`` also ranks the held-out pairs by the untrained LM's mean log-prob.
The spec's bar for hh-rlhf is accuracy > 65%. ``bench/rm_hh_sweep.sh`` runs every recorded variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"
SFT_SETTINGS = ["lora.r=16", "lora.alpha=32", "train.learning_rate=2e-4", "train.batch_size=8", "train.epochs=1",
                "data.max_length=256", "data.on_invalid=skip"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="", help="label of this variant in the results file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    ap.add_argument("--sft-first", action="store_true", help="SFT on the training pairs' chosen responses first")
    ap.add_argument("--aggregate", default="mean", help="how an ensemble's members are combined (mean, min, ...)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "rm_hh.json"))
    ap.add_argument("--output-dir", default="/tmp/alignkit-bench-rm-hh")
    ap.add_argument("--baseline", action="store_true", help="also score the held-out pairs by the base LM's log-probs")
    args = ap.parse_args()

    from alignkit.models.load import cpu_has_native_bf16
    from alignkit.stats import wilson_interval
    from alignkit.train import make_config, run

    t0 = time.time()
    overrides = [
        f"data.train={DATA}[:1200]",
        f"data.eval={DATA}[1200:]",
        f"train.output_dir={args.output_dir}",
        "train.overwrite=true",
        *args.overrides,
    ]
    if args.sft_first:
        overrides.append(f"model.name={_sft_backbone(Path(args.output_dir + '-sft'))}")
    cfg = make_config("rm", str(REPO / "configs" / "rm_hh.yaml"), overrides)
    result = run("rm", cfg)
    if cfg.method.ensemble_size > 1:
        ev = _score_saved(Path(cfg.train.output_dir), args.aggregate)
    else:
        m = result.eval_metrics
        ev = {"accuracy": m["eval/rewards/accuracies"], "margin": m["eval/rewards/margins"],
              "brier": m["eval/calibration/brier"], "ece": m["eval/calibration/ece"],
              "loss": m["eval/loss"]}  # fmt: skip
    wall = time.time() - t0
    n_eval = 300 - _invalid(f"{DATA}[1200:]")
    acc = ev["accuracy"]
    row = {
        "name": args.name or " ".join(args.overrides) or "configs/rm_hh.yaml",
        "overrides": args.overrides + (["--sft-first"] if args.sft_first else []),
        "train_pairs_used": result.steps * cfg.train.batch_size * cfg.train.grad_accum,
        "eval_pairs": n_eval,
        "eval_accuracy": acc,
        "eval_accuracy_ci95": [round(x, 4) for x in wilson_interval(acc * n_eval, n_eval)],
        "eval_margin": ev["margin"],
        "eval_brier": ev["brier"],
        "eval_ece": ev["ece"],
        "eval_loss": ev.get("loss"),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": result.peak_memory_mb,
        "steps": result.steps,
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    if cfg.method.ensemble_size > 1:
        row["aggregate"] = args.aggregate
    if args.baseline:
        row["base_lm_mean_logp_accuracy"] = _baseline(cfg)
    print(json.dumps(row, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    lo, hi = row["eval_accuracy_ci95"]
    print(
        f"hh-rlhf reward model {row['name']}: held-out accuracy {acc:.3f} [{lo:.3f}, {hi:.3f}] (bar > 0.65), "
        f"ECE {row['eval_ece']:.3f}, Brier {row['eval_brier']:.3f}; wall {wall / 60:.1f} min"
    )


def _invalid(spec: str) -> int:
    from alignkit.data import read_records, to_pairwise, validate_records

    records = read_records(spec)
    return len(records) - len(validate_records(records, to_pairwise, "skip")[0])


def _sft_backbone(root: Path) -> str:
    """SFT (LoRA, merged) on the chosen responses of the training pairs -> the merged model's directory."""
    from alignkit.data import read_records, to_pairwise, validate_records
    from alignkit.models.merge import merge_adapter
    from alignkit.train import make_config, run

    root.mkdir(parents=True, exist_ok=True)
    examples, _ = validate_records(read_records(f"{DATA}[:1200]"), to_pairwise, "skip")
    sft = root / "sft.jsonl"
    with sft.open("w") as f:
        for e in examples:
            record = {"prompt": _plain(e.prompt), "completion": _plain(e.chosen)}
            f.write(json.dumps(record) + "\n")
    cfg = make_config("sft", None, [f"data.train={sft}", f"train.output_dir={root / 'sft'}", "train.overwrite=true",
                                    *SFT_SETTINGS])  # fmt: skip
    run("sft", cfg)
    return str(merge_adapter(root / "sft" / "model", root / "merged"))


def _plain(content):
    return content if isinstance(content, str) else [dict(m) for m in content]


def _score_saved(model_dir: Path, how: str) -> dict:
    """Held-out metrics of a saved model or ensemble through ``alignkit score``'s code path."""
    from alignkit.data import read_records
    from alignkit.reward_model.scoring import RewardModel, score_records

    reward = RewardModel.load(model_dir, dtype="auto")
    _, summary = score_records(reward, read_records(f"{DATA}[1200:]"), how=how, batch_size=16)
    return summary


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
