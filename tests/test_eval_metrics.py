"""alignkit eval metrics: a trained LoRA policy against its base on the tiny model, end to end."""

from __future__ import annotations

import json

import pytest
from conftest import pair_records
from helpers import tiny_sections, write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.errors import UserError
from alignkit.train import make_config, run

PROMPTS = [{"prompt": f"Tell me about number {i}.", "category": "odd" if i % 2 else "even"} for i in range(6)]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter trained with DPO from the tiny model, and a tiny reward model."""
    tmp = tmp_path_factory.mktemp("metrics")
    pairs = str(write_jsonl(tmp / "pairs.jsonl", pair_records(16)))
    quiet = {"log": lambda *a, **k: None}
    sections = tiny_sections(tiny_model_dir, pairs, tmp / "dpo", max_steps=4, learning_rate=5e-3)
    policy = run("dpo", make_config("dpo", **sections, lora={"r": 4}), **quiet).model_dir
    sections = tiny_sections(tiny_model_dir, pairs, tmp / "rm", max_steps=2)
    rm = run("rm", make_config("rm", **sections), **quiet).model_dir
    return {"policy": str(policy), "rm": str(rm), "pairs": pairs, "prompts": str(write_jsonl(tmp / "p.jsonl", PROMPTS))}


def test_metrics_of_a_trained_adapter_against_its_base(trained, tiny_model_dir, tmp_path):
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, [
        "eval", "metrics", "--model", trained["policy"], "--prompts", trained["prompts"], "--samples", "2",
        "--max-new-tokens", "8", "--reward-model", trained["rm"], "--pairs", trained["pairs"], "--safety",
        "--safety-limit", "4", "--winrate-temperature", "0", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    assert m["kind"] == "metrics" and m["reference"] == tiny_model_dir  # the adapter's base
    assert m["kl"]["full"]["sequence"]["mean"] > 0 and m["kl"]["k2"]["sequence"]["min"] >= 0
    assert m["policy_text"]["responses"] == 12 and m["reference_text"]["length_tokens"]["max"] <= 8
    w = m["reward"]["win_rate"]
    assert w["wins"] + w["ties"] + w["losses"] == 6 and set(w["per_category"]) == {"odd", "even"}
    assert m["winrate_temperature"] == 0 and len(m["winrate_samples"]) == 6  # greedy responses, judged apart
    assert "(T=0.0 responses)" in result.output
    assert m["pairs"]["pairs"] == 16 and 0 <= m["pairs"]["length_bias"]["implicit_reward_favours_longer"] <= 1
    assert m["safety"]["policy"]["n_harmful"] + m["safety"]["policy"]["n_benign"] == 4
    assert "KL(policy || reference)" in result.output and "win rate of the policy" in result.output


def test_a_model_against_itself_has_zero_kl(tiny_model_dir, trained, tmp_path):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["eval", "metrics", "--model", tiny_model_dir, "--reference", tiny_model_dir,
                                      "--prompts", trained["prompts"], "--max-new-tokens", "6",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    kl = json.loads(out.read_text())["kl"]
    for kind in ("k1", "k2", "k3", "full"):
        assert abs(kl[kind]["sequence"]["mean"]) < 1e-4
    # same seeds, same model: the two sample sets are identical
    samples = json.loads(out.read_text())["samples"]
    assert all(s["policy"] == s["reference"] for s in samples)


def test_bad_input(tiny_model_dir, trained, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "metrics", "--model", tiny_model_dir, "--prompts", trained["prompts"],
                            "--temperature", "0"])  # fmt: skip
    assert isinstance(r.exception, UserError) and "--temperature 0.0. Fix" in str(r.exception)
    r = runner.invoke(app, ["eval", "metrics", "--model", tiny_model_dir, "--prompts", trained["prompts"],
                            "--winrate-temperature", "-1"])  # fmt: skip
    assert isinstance(r.exception, UserError) and "--winrate-temperature -1.0. Fix" in str(r.exception)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "no prompt here"}])
    r = runner.invoke(app, ["eval", "metrics", "--model", tiny_model_dir, "--prompts", str(bad)])
    assert isinstance(r.exception, UserError) and "bad.jsonl:1: field 'prompt': is missing" in str(r.exception)
    r = runner.invoke(app, ["eval", "metrics", "--model", tiny_model_dir, "--prompts", trained["prompts"],
                            "--out", trained["prompts"]])  # fmt: skip
    assert isinstance(r.exception, UserError) and "is an input of this command" in str(r.exception)
