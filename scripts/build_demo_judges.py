"""Build the two judges the DPO demo ships with (src/alignkit/resources/judges/KEY/), so a first `make demo` does not
train them (about 10 minutes on 2 cores without native bf16).

    .venv/bin/python scripts/build_demo_judges.py [--hh ../shared/data/hh-rlhf/harmless-base-test-part1.jsonl.gz]

Each judge is trained exactly as the demo would train it (``recipes.demo_eval.demo_judge``: the same data, slices and
recipe, so the same cache key), then copied with its LoRA and head weights stored in bf16 (half the size; the
scores move by about 0.4% of a weight's magnitude) and measured again as shipped: held-out accuracy on hh-rlhf
and agreement with the clear-cut held-out demo pairs, written to its ``judge.json`` with where it came from.

Data and licences: hh-rlhf (Anthropic, MIT licence, ../shared/data/hh-rlhf/LICENSE) and the project's own judge
pairs (``builtin:judge_prefs.jsonl``, written by the alignkit authors; Apache-2.0 like the code). The base model is
SmolLM2-135M-Instruct (Apache-2.0).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignkit.recipes.demo_eval import (
    HH_ONLY_TRAIN,
    JUDGE_DATA,
    JUDGE_EVAL,
    JUDGE_NAMES,
    JUDGE_OWN,
    JUDGE_RECIPE,
    JUDGE_TRAIN,
    SANITY_PAIRS,
    demo_judge,
    judge_dir_for,
    shipped_judge_dir,
)

KEEP = ("adapter_config.json", "adapter_model.safetensors", "alignkit_reward.json", "chat_template.jinja",
        "tokenizer.json", "tokenizer_config.json")  # fmt: skip


def ship(name: str, hh: str, slices: tuple[str, str], own: str | None) -> Path:
    """Train (or reuse from the cache) the judge ``name``, write its shipped copy, measure it; -> the shipped dir."""
    from alignkit.reward_model import RewardModel
    from alignkit.reward_model.scoring import pair_agreement

    path, info = demo_judge(hh, JUDGE_RECIPE, print, slices, own)
    if path is None:
        raise SystemExit(f"{name}: {info['reason']}")
    key = judge_dir_for(Path(hh), JUDGE_RECIPE, slices, own).name
    target = shipped_judge_dir(key)
    if Path(path).resolve().is_relative_to(target.resolve()):
        print(f"{name}: already shipped in {target}")
        return target
    tmp = target.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "model").mkdir(parents=True)
    for f in KEEP:
        shutil.copy2(Path(path) / f, tmp / "model" / f)
    weights = load_file(str(Path(path) / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(tmp / "model" / "adapter_model.safetensors"))
    rm = RewardModel.load(str(tmp / "model"))
    held_out = pair_agreement(rm, info["held_out"])["accuracy"]
    sanity = pair_agreement(rm, SANITY_PAIRS)
    shipped = {
        **{k: v for k, v in info.items() if k not in ("trained_in_this_run", "stage_seconds")},
        "name": name, "held_out_accuracy": held_out, "held_out_accuracy_fp32": info["held_out_accuracy"],
        "demo_pairs_agreement": sanity["accuracy"], "weights": "LoRA and head in bf16 (trained in fp32)",
        "built_by": "scripts/build_demo_judges.py", "data_licence": "hh-rlhf: MIT (Anthropic); project pairs: ours",
    }  # fmt: skip
    (tmp / "judge.json").write_text(json.dumps(shipped, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    print(f"{name}: {target} (held-out accuracy {held_out:.3f}, fp32 {info['held_out_accuracy']:.3f}; demo pairs "
          f"{sanity['accuracy']:.3f})")  # fmt: skip
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hh", default=JUDGE_DATA, help="hh-rlhf harmless-base-test-part1.jsonl.gz")
    args = ap.parse_args()
    if not Path(args.hh).is_file():
        raise SystemExit(f"{args.hh} not found: the judges train on hh-rlhf (../shared/data/hh-rlhf)")
    plans = (((JUDGE_TRAIN, JUDGE_EVAL), JUDGE_OWN), ((HH_ONLY_TRAIN, JUDGE_EVAL), None))
    for name, (slices, own) in zip(JUDGE_NAMES, plans):
        ship(name, args.hh, slices, own)


if __name__ == "__main__":
    main()
