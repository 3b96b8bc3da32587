"""Slow tests on the embedded SmolLM2-135M-Instruct (select with -m slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alignkit.data import Tokenizer, read_records, to_pairwise, tokenize_pairs, validate_records
from alignkit.data.collate import collate_pairs
from alignkit.data.jsonl import read_jsonl
from alignkit.errors import UserError
from alignkit.logprobs import token_logprobs
from alignkit.models import load_model, load_tokenizer
from alignkit.models.embedded import embedded_model_dir
from alignkit.train import make_config, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return load_model(None)


@pytest.fixture(scope="module")
def demo_pairs():
    tok = Tokenizer(load_tokenizer(None))
    examples, _ = validate_records(read_records("builtin:demo_prefs_heldout.jsonl")[:4], to_pairwise)
    return tokenize_pairs(examples, tok, 256, None)[0], tok


def test_cached_copy_is_a_plain_float_model():
    config = json.loads((embedded_model_dir() / "config.json").read_text())
    assert "quantization_config" not in config
    assert (embedded_model_dir() / "model.safetensors").is_file()


def test_fused_logprobs_equal_plain_on_the_real_model(model, demo_pairs):
    pairs, tok = demo_pairs
    batch = collate_pairs(pairs, tok.pad_id)
    with torch.no_grad():
        fused = token_logprobs(model, **batch, fused=True)
        plain = token_logprobs(model, **batch, fused=False)
    torch.testing.assert_close(fused, plain, atol=2e-4, rtol=1e-4)
    assert (fused.sum(-1) < 0).all()


def test_one_dpo_step_full_and_lora(tmp_path):
    for name, extra in (("full", []), ("lora", ["lora.r=8"])):
        out = tmp_path / name
        cfg = make_config(
            "dpo",
            overrides=[
                "data.train=builtin:demo_prefs_train.jsonl",
                "data.max_examples=8",
                "data.max_length=256",
                f"train.output_dir={out}",
                "train.max_steps=2",
                "train.batch_size=4",
                "train.logging_steps=1",
                "model.dtype=fp32",
                *extra,
            ],
        )
        result = run("dpo", cfg, log=lambda *a: None)
        rows = read_jsonl(out / "metrics.jsonl")
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
        assert all(math.isfinite(r["loss"]) for r in rows)
        assert (result.model_dir / ("adapter_config.json" if name == "lora" else "model.safetensors")).is_file()


def test_greedy_generation_is_deterministic(model):
    from alignkit.generation import generate

    tokenizer = load_tokenizer(None)
    a = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=8)
    b = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=8)
    assert a == b and "Paris" in a[0]


JUDGE_SMALL = ["lora.r=4", "data.max_length=128", "data.on_invalid=skip", "train.max_steps=2", "train.batch_size=4",
               "train.eval_batch_size=16", "method.norm_pairs=16"]  # fmt: skip
# 3 held-out demo pairs of each of the 4 categories (the file holds 18 of each, in order): the demo's held-out set
# and the judge's sanity check on reduced settings
HELD_OUT_12 = " + ".join(f"builtin:demo_prefs_heldout.jsonl[{s}:{s + 3}]" for s in (0, 18, 36, 54))


def test_demo_job_writes_a_complete_report(tmp_path, monkeypatch):
    """The main job on reduced settings: every artifact is written from measured numbers, the judge is trained on
    hh-rlhf once and reused, and every goal is checked."""
    import alignkit.recipes.demo_eval as demo_eval
    from alignkit.recipes.demo_dpo import run_demo

    hh = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"
    if not hh.is_file():
        pytest.skip(f"{hh} not found: the demo's judge trains on hh-rlhf from ../shared/data")
    monkeypatch.setattr(demo_eval, "judge_dir_for", lambda data, recipe, slices, own: tmp_path / f"judge-{own is None}")
    out = tmp_path / "demo"
    small = dict(judge_data=str(hh), judge_recipe=JUDGE_SMALL, judge_slices=("[:16]", "[1200:1232]"),
                 hh_only_train="[16:40]", helpful_limit=4,
                 safety_limit=4, eval_tokens=8, max_new_tokens=4, sanity_pairs=HELD_OUT_12)  # fmt: skip
    lines = []
    summary = run_demo(
        str(out),
        ["train.max_steps=2", "train.eval_steps=2", "data.max_examples=8", f"data.eval={HELD_OUT_12}"],
        log=lines.append,
        **small,
    )
    for name in (
        "report.md",
        "summary.json",
        "metrics.jsonl",
        "config.yaml",
        "loss.png",
        "margins.png",
        "accuracy.png",
        "kl.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "model" / "adapter_config.json").is_file()
    assert summary["pairs"] == 12 and summary["optimizer steps"] == 2
    assert 0.0 <= summary["mean_logp_accuracy_before"] <= 1.0 and summary["seconds per optimizer step"] > 0
    report = (out / "report.md").read_text()
    assert f"{summary['mean_logp_accuracy_before']:.3f}" in report and "| prompt | before | after |" in report
    generations = report.split("## Generations before and after (greedy)")[1].strip().splitlines()
    assert len(generations) == 2 + 8  # header, rule, one row per demo prompt
    assert (out / "report.html").is_file()
    # the goals: each measured, each stated met or not in the report and the log
    goals = {g["goal"]: g for g in summary["goals"]}
    assert len(goals) == 8 and all(isinstance(g["met"], bool) for g in goals.values())
    wins = [g for name, g in goals.items() if name.startswith("win rate")]  # one per judge
    assert [w["goal"].split("judge: ")[1].split(",")[0] for w in wins] == ["hh-rlhf + project pairs", "hh-rlhf only"]
    assert all(0.0 <= w["value"] <= 1.0 and w["target"].startswith(">= 0.60") for w in wins)
    assert goals["peak resident memory of the demo process, MB"]["value"] == pytest.approx(
        summary["peak resident memory of the whole demo (MB)"], abs=1
    )
    m = json.loads((out / "eval_vs_base.json").read_text())
    assert m["prompts"] == 12 + 4 and m["reward"]["win_rate"]["wins"] + m["reward"]["win_rate"]["ties"] + m[
        "reward"]["win_rate"]["losses"] == 16  # fmt: skip
    mixed, hh_only = summary["judge"]["hh-rlhf + project pairs"], summary["judge"]["hh-rlhf only"]
    assert "goals met" in report and f"{mixed['held_out_accuracy']:.3f}" in report
    assert f"{hh_only['held_out_accuracy']:.3f}" in report
    # each judge is checked on the clear-cut held-out demo pairs, and the report says how it did and whether the two
    # verdicts agree
    for j in m["by_judge"].values():
        assert j["sanity"]["pairs"] == 12 and set(j["sanity"]["per_category"]) == {
            "helpfulness", "harmlessness", "honesty", "concision"}  # fmt: skip
        assert f"{j['sanity']['accuracy']:.3f} of 12 (" in report and f"{j['win_rate']['rate']:.3f} [" in report
    assert m["judge_sanity"] == m["by_judge"]["hh-rlhf + project pairs"]["sanity"]
    assert "The judges agree" in report or "The judges DISAGREE" in report
    assert mixed["train_pairs"] == 16 + 200 and hh_only["train_pairs"] == 24  # hh[:16] + project pairs; hh[16:40]
    wall = goals["demo wall time, seconds (the judge trained and cached)"]
    assert wall["value"] < summary["total wall seconds (incl. judge, scoring, generation, evaluation)"]
    assert "trained the judge once" in wall["detail"]
    assert sum(line.startswith(("met: ", "NOT met: ")) for line in lines) == 8
    # a second call reuses the cached judge instead of training it again
    lines.clear()
    again, _ = demo_eval.demo_judge(str(hh), JUDGE_SMALL, lines.append, small["judge_slices"])
    assert again == str(tmp_path / "judge-False" / "model") and any("reusing the reward model" in x for x in lines)
    # a judge given by directory (alignkit demo --judge DIR) reports its own saved held-out accuracy
    given = demo_eval.given_judge(str(tmp_path / "judge-False" / "model"))
    assert given["held_out_accuracy"] == pytest.approx(mixed["held_out_accuracy"])
    with pytest.raises(UserError, match="not a reward model"):
        demo_eval.given_judge(str(out / "model"))  # the DPO adapter is not a reward model


def test_judge_without_hh_trains_on_the_extra_pairs(tmp_path, monkeypatch):
    """No hh-rlhf at the judge path but extra judge pairs: the judge trains on those alone, held out on the demo's."""
    from conftest import pair_records
    from helpers import write_jsonl

    import alignkit.recipes.demo_eval as demo_eval

    own = str(write_jsonl(tmp_path / "own.jsonl", pair_records(12)))
    monkeypatch.setattr(demo_eval, "judge_dir_for", lambda *a: tmp_path / "judge")
    judge, info = demo_eval.demo_judge(str(tmp_path / "missing.jsonl.gz"), JUDGE_SMALL, lambda *_: None, own=own)
    assert judge == str(tmp_path / "judge" / "model") and info["data"] == own
    assert info["train_pairs"] == 12 and info["held_out"] == demo_eval.SANITY_PAIRS
    assert 0.0 <= info["held_out_accuracy"] <= 1.0 and info["trained_in_this_run"]


def test_judge_cache_key_follows_its_inputs(tmp_path):
    from alignkit.recipes.demo_eval import JUDGE_RECIPE, judge_dir_for

    hh = tmp_path / "hh.jsonl"
    hh.write_text("{}\n")
    JUDGE_OWN = "builtin:demo_prefs_heldout.jsonl"  # any pairs file stands in for the extra judge pairs
    key = judge_dir_for(hh, JUDGE_RECIPE, ("[:4]", "[4:]"), JUDGE_OWN)
    assert key == judge_dir_for(hh, JUDGE_RECIPE, ("[:4]", "[4:]"), JUDGE_OWN)
    assert key != judge_dir_for(None, JUDGE_RECIPE, ("[:4]", "[4:]"), JUDGE_OWN)  # hh missing: another judge
    assert key != judge_dir_for(hh, JUDGE_RECIPE, ("[:4]", "[4:]"), None)
    assert key != judge_dir_for(hh, JUDGE_RECIPE[:-1], ("[:4]", "[4:]"), JUDGE_OWN)


def test_demo_without_the_judge_data_says_so(tmp_path):
    """Neither hh-rlhf nor the project's pairs: no judge, no win-rate goal, and the report says the win rate was not
    measured; the one-time judge training is left out of the time goal."""
    from alignkit.eval.report.blocks import render_markdown
    from alignkit.recipes.demo_eval import check_goals, demo_judge, goals_section

    judge, info = demo_judge(str(tmp_path / "missing.jsonl.gz"), own=None)
    assert judge is None and "not found" in info["reason"]
    text = {"length_tokens": {"mean": 40.0}, "repetition_4gram": 0.0, "loop_rate": 0.0, "distinct_2": 0.9,
            "finished_by_eos": 0.5}  # fmt: skip
    m = {"prompts": 3, "kl": {"full": {"sequence": {"mean": 6.0, "p50": 5.0, "p90": 9.0}}}, "policy_text": text,
         "reference_text": text}  # fmt: skip
    goals = check_goals(m, 100.0, 600.0)
    assert [g["met"] for g in goals] == [False, True, True]  # KL 6 > 5; no loops; 100 s < 600 s
    assert not any(g["goal"].startswith("win rate") for g in goals)
    assert "The win rate is not measured" in render_markdown(goals_section(goals, m, {"hh-rlhf only": info}))
    late = check_goals(m, 700.0, 600.0, setup_seconds=250.0)[-1]
    assert late["met"] and late["value"] == 450.0 and "250 s, 700 s in all" in late["detail"]
    assert not check_goals(m, 700.0, 600.0, setup_seconds=50.0)[-1]["met"]
    memory = check_goals(m, 100.0, 600.0, peak_mb=3100.0)[-1]
    assert memory["goal"].startswith("peak resident memory") and not memory["met"] and memory["value"] == 3100.0
    assert check_goals(m, 100.0, 600.0, peak_mb=2900.0)[-1]["met"]
