"""Golden numbers: the first steps of every method family on a tiny fixed model in fp32, pinned.

Each case trains 3 steps through the public API (``alignkit.train.make_config`` + ``run``) and compares every
logged metric of every step (loss, grad norm, rewards, margins, KL, advantages, ...) with
``tests/golden/<case>.json``. The keys must match exactly (a renamed or dropped metric is a change users see); the
values must match within ``RTOL`` relative or ``ATOL`` absolute. Wall-clock metrics (seconds, tokens/s, memory) are
not pinned.

Tolerance: fp32 on CPU is deterministic run to run on one machine, but a CPU with AVX-512 and one with AVX2 take
different oneDNN/MKL kernels, whose reductions add in another order: about 1e-7 relative per operation, which three
optimizer steps grow to ~1e-6 (measured: the whole suite is bit-identical run to run here). ``RTOL = 1e-4`` leaves a
100x margin for that, while a behaviour change (a mask off by one token, a dropped loss term, another reduction,
another data order) moves these numbers by 1e-3 or far more. Online cases sample with one uniform draw per row, so
a kernel difference flips a token only when a draw lands within ~1e-6 of a boundary.

When a change is meant to move the numbers, regenerate and say why in the commit message:

    .venv/bin/python -m pytest tests/test_golden.py --update-golden
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import pair_records
from helpers import write_jsonl

from alignkit.train import make_config, run

GOLDEN_DIR = Path(__file__).parent / "golden"
# ATOL: metrics that are float round-off (KL between identical policies at step 1) differ by CPU kernels: GRPO's
# step-1 kl/sequence is -6.0e-7 with AVX2 and +8.6e-7 with AVX-512 bf16-capable CPUs (both fp32 runs).
RTOL, ATOL = 1e-4, 1e-5
STEPS = 3
UNPINNED = ("time/", "seconds", "per_second", "memory")  # wall clock: differs run to run


def _sft_records() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i} it is."}]}
        for i in range(16)
    ]


def _feedback_records() -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} plus {i + 1}?"}],
            "completion": [{"role": "assistant", "content": f"It is {2 * i + 1}." if i % 2 else "No idea."}],
            "label": bool(i % 2),
        }
        for i in range(16)
    ]


def _prompt_records() -> list[dict]:
    words = "hi hello how is the weather today tell me a joke".split()
    return [{"prompt": " ".join(words[i % 5 : i % 5 + 4])} for i in range(16)]


# case -> (command, data, model fixture, config sections beyond the shared base)
ONLINE = {"rewards": ["reward_fns:yes_share"], "reward_workers": 0}
CASES = {
    "sft": ("sft", _sft_records, "tiny_model_dir", {}),
    "dpo": ("dpo", lambda: pair_records(16), "tiny_model_dir",
            {"method": {"beta": 0.1}, "data": {"eval_fraction": 0.25}}),
    "simpo": ("simpo", lambda: pair_records(16), "tiny_model_dir", {}),
    "kto": ("kto", _feedback_records, "tiny_model_dir", {"method": {"beta": 0.5}}),
    "rm": ("rm", lambda: pair_records(16), "tiny_model_dir", {"data": {"eval_fraction": 0.25}}),
    "grpo": ("grpo", _prompt_records, "word_model_dir", {
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12},
        "method": {**ONLINE, "beta": 0.05}}),
    "grpo-gspo": ("grpo", _prompt_records, "word_model_dir", {
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12},
        "method": {**ONLINE, "policy_loss": "gspo", "loss_aggregation": "sequence_mean", "clip_low": 3e-4,
                   "clip_high": 4e-4, "iterations": 2}}),
    "grpo-cispo": ("grpo", _prompt_records, "word_model_dir", {
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12},
        "method": {**ONLINE, "policy_loss": "cispo", "clip_low": 1.0, "clip_high": 0.28, "iterations": 2}}),
    "rloo": ("rloo", _prompt_records, "word_model_dir", {
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12}, "method": ONLINE}),
    "ppo": ("ppo", _prompt_records, "word_model_dir", {
        "rollout": {"prompts_per_step": 8, "samples_per_prompt": 2, "max_new_tokens": 12},
        "method": {**ONLINE, "iterations": 2, "minibatches": 2, "kl_target": 0.05, "kl_horizon": 16}}),
    "online-dpo": ("online-dpo", _prompt_records, "word_model_dir", {
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12},
        "method": {**ONLINE, "beta": 0.1, "replay_ratio": 0.0}}),
    "online-kto": ("online-kto", _prompt_records, "word_model_dir", {
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12},
        "method": {**ONLINE, "beta": 0.1}}),
}  # fmt: skip


def _sections(model_dir: str, data: str, out: Path, extra: dict) -> dict:
    base = {
        "model": {"name": model_dir, "dtype": "fp32", "device": "cpu"},
        "data": {"train": data, "max_length": 64},
        "train": {"output_dir": str(out), "batch_size": 4, "learning_rate": 1e-3, "max_steps": STEPS,
                  "logging_steps": 1, "warmup_ratio": 0.0, "lr_scheduler": "constant", "seed": 7},
    }  # fmt: skip
    for section, values in extra.items():
        base[section] = {**base.get(section, {}), **values}
    return base


def _pinned(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in sorted(row.items()) if not any(u in k for u in UNPINNED)} for row in history]


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)
    return a == b


@pytest.mark.parametrize("case", list(CASES))
def test_first_steps_match_the_golden_numbers(case, request, tmp_path):
    command, records, model_fixture, extra = CASES[case]
    data = write_jsonl(tmp_path / "data.jsonl", records())
    cfg = make_config(command, **_sections(request.getfixturevalue(model_fixture), str(data), tmp_path / "run", extra))
    rows = _pinned(run(command, cfg, log=lambda *a, **k: None).history)
    path = GOLDEN_DIR / f"{case}.json"
    if request.config.getoption("--update-golden"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"case": case, "rtol": RTOL, "atol": ATOL, "history": rows}, indent=1) + "\n")
        pytest.skip(f"wrote {path}")
    assert path.is_file(), f"{path} is missing. Fix: run pytest tests/test_golden.py --update-golden"
    expected = json.loads(path.read_text())["history"]
    assert len(rows) == len(expected), f"{case}: {len(rows)} logged rows, golden has {len(expected)}"
    for got, want in zip(rows, expected):
        assert sorted(got) == sorted(want), (
            f"{case} step {want.get('step')}: metric names differ: new {sorted(set(got) - set(want))}, "
            f"gone {sorted(set(want) - set(got))}"
        )
        moved = {k: (want[k], got[k]) for k in want if not _close(got[k], want[k])}
        assert not moved, f"{case} step {want.get('step')}: (golden, now) {moved}"
