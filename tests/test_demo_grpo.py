"""The GRPO demo end to end on the tiny model (fast) and on the embedded model (slow, a few steps): held-out
accuracy before and after, the paired test, the plots and the report."""

from __future__ import annotations

import json

import pytest

from alignkit.eval.accuracy import MathEvalResult
from alignkit.recipes.demo_grpo import paired_change, run_grpo_demo

QUIET = {"log": lambda *a, **k: None}


def small(model_dir: str) -> list[str]:
    return [
        f"model.name={model_dir}",
        "model.dtype=fp32",
        "train.max_steps=2",
        "train.batch_size=8",
        "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=8",
        "data.eval=null",
        "method.reward_workers=0",
    ]


def test_grpo_demo_writes_a_complete_report(tiny_model_dir, tmp_path):
    summary = run_grpo_demo(str(tmp_path / "demo"), small(tiny_model_dir), heldout=12, **QUIET)
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    for text in ("Accuracy on held-out templates", "Accuracy on in-template", "McNemar", "before", "after",
                 "reward.png", "Generations before and after"):  # fmt: skip
        assert text in report, text
    assert (out / "reward.png").is_file() and (out / "phases.png").is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["before"]["n"] == saved["after"]["n"] == 24  # 12 new phrasings + 12 new scenarios
    assert saved["in_template_before"]["n"] == 12 and set(saved["by_kind_after"]) == {"new_phrasing", "new_scenario"}
    assert saved["optimizer steps"] == 2 == summary["optimizer steps"]
    assert 0 <= saved["held-out templates: accuracy after"] <= 1 and 0 <= saved["in-template: accuracy after"] <= 1


def _result(correct: list[bool]) -> MathEvalResult:
    records = [{"rewards": [1.0 if c else 0.0]} for c in correct]
    acc = sum(correct) / len(correct)
    return MathEvalResult(len(correct), 1, 0.0, acc, (0, 1), {1: acc}, {}, 0.0, 1.0, 0.0, 0.0, records)


def test_paired_change_counts_fixed_and_broken_answers():
    before = _result([True, False, False, False, True, False])
    after = _result([True, True, True, False, False, True])
    change = paired_change(before, after)
    assert change["fixed"] == 3 and change["broken"] == 1
    assert change["change"] == pytest.approx(2 / 6)
    assert change["p_value"] == pytest.approx(0.625)  # exact binomial, 1 of 4 discordant pairs, two-sided


@pytest.mark.slow
def test_grpo_demo_on_the_embedded_model(tmp_path):
    overrides = ["train.max_steps=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "data.eval=null",
                 "method.dynamic_sampling=false"]  # fmt: skip
    summary = run_grpo_demo(str(tmp_path / "demo"), overrides, heldout=4, **QUIET)
    assert summary["before"]["n"] == 8 and summary["in_template_before"]["n"] == 4
    assert summary["before"]["no_answer"] < 0.5  # the embedded model answers the arithmetic prompts
    assert (tmp_path / "demo" / "report.md").is_file()
