"""The DPO demo's two judges: verdicts, what the report says when they disagree, and the judges that ship."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import alignkit.recipes.demo_eval as demo_eval
from alignkit.recipes.demo_eval import judges_say, verdict


def _judge(lo: float, hi: float, sane: float) -> dict:
    return {"win_rate": {"rate": (lo + hi) / 2, "bootstrap": [lo, hi]}, "sanity": {"accuracy": sane}}


def test_a_verdict_follows_the_interval_not_the_point():
    assert verdict({"bootstrap": [0.52, 0.70]}) == "better"
    assert verdict({"bootstrap": [0.30, 0.49]}) == "worse"
    assert verdict({"bootstrap": [0.45, 0.80]}) == "no clear difference"  # a 0.62 point inside a wide interval


def test_the_report_says_plainly_when_the_judges_disagree():
    both = {"hh-rlhf + project pairs": _judge(0.58, 0.75, 0.97), "hh-rlhf only": _judge(0.40, 0.60, 0.55)}
    text = judges_say(both)
    assert "DISAGREE" in text and "hh-rlhf + project pairs says better" in text
    assert "hh-rlhf only says no clear difference" in text
    assert "Below 80% on the clear-cut pairs (hh-rlhf only)" in text and "learned nothing the project wrote" in text
    agree = judges_say({"hh-rlhf + project pairs": _judge(0.55, 0.7, 0.9), "hh-rlhf only": _judge(0.51, 0.6, 0.9)})
    assert agree.startswith("The judges agree: better than the base.") and "Below" not in agree
    one = judges_say({"given": _judge(0.3, 0.45, 0.9)})
    assert one.startswith("The judge's verdict: worse than the base.")


def test_a_shipped_judge_is_used_without_training(tmp_path, monkeypatch):
    """A judge in resources/judges/KEY (KEY from the data, slices, recipe and project pairs) is returned as is."""
    data = tmp_path / "hh.jsonl"
    data.write_text(json.dumps({"chosen": "a", "rejected": "b"}) + "\n")
    key = demo_eval.judge_dir_for(data, ["x=1"], ("[:1]", "[1:]"), None).name
    shipped = tmp_path / "judges" / key
    (shipped / "model").mkdir(parents=True)
    (shipped / "judge.json").write_text(json.dumps({"held_out_accuracy": 0.6, "data": "hh"}))
    monkeypatch.setattr(demo_eval, "shipped_judge_dir", lambda k: tmp_path / "judges" / k)
    lines = []
    path, info = demo_eval.demo_judge(str(data), ["x=1"], lines.append, ("[:1]", "[1:]"), own=None)
    assert path == str(shipped / "model") and info["held_out_accuracy"] == 0.6 and not info["trained_in_this_run"]
    assert any("shipped" in line for line in lines)
    # another recipe is another key: not the shipped judge (it would train; here the data is too small to)
    assert demo_eval.judge_dir_for(data, ["x=2"], ("[:1]", "[1:]"), None).name != key


HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"


@pytest.mark.skipif(not HH.is_file(), reason=f"{HH} not found: the shipped judges are keyed on it")
def test_both_demo_judges_ship_for_the_demos_exact_recipe():
    """A first `make demo` trains no judge: both ship, keyed on the demo's data, slices and recipe, each with the
    numbers measured on the shipped (bf16) copy and where it came from."""
    from alignkit.recipes.demo_eval import (
        HH_ONLY_TRAIN,
        JUDGE_EVAL,
        JUDGE_OWN,
        JUDGE_RECIPE,
        JUDGE_TRAIN,
        judge_dir_for,
        shipped_judge_dir,
    )

    for slices, own in (((JUDGE_TRAIN, JUDGE_EVAL), JUDGE_OWN), ((HH_ONLY_TRAIN, JUDGE_EVAL), None)):
        shipped = shipped_judge_dir(judge_dir_for(HH, JUDGE_RECIPE, slices, own).name)
        info = json.loads((shipped / "judge.json").read_text())
        assert info["recipe"] == JUDGE_RECIPE and info["built_by"] == "scripts/build_demo_judges.py"
        assert (own is None) == ("judge_prefs" not in info["data"]) and 0.4 < info["held_out_accuracy"] < 1
        assert (shipped / "model" / "adapter_model.safetensors").stat().st_size < 12e6  # bf16
