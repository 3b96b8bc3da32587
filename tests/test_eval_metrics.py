"""alignkit eval metrics: a trained LoRA policy against its base on the tiny model, end to end."""

from __future__ import annotations

import json

import pytest
import torch
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


def test_an_adapters_reference_is_its_base_with_the_adapter_off(trained, tiny_model_dir):
    """One copy of the weights: the reference sampler is the policy's PEFT model with its adapter disabled, and it
    samples and scores exactly as the base model loaded on its own."""
    from alignkit.eval.policy import load_pair
    from alignkit.eval.samples import sample_kl
    from alignkit.generation import load_sampler

    pol, ref = load_pair(trained["policy"], tiny_model_dir, "cpu")
    assert ref.adapter_off and ref.model is pol.model
    alone = load_sampler(tiny_model_dir, "cpu")
    prompts = [r["prompt"] for r in PROMPTS]
    shared = ref.generate(prompts, n=2, max_new_tokens=8, temperature=1.0, seed=3)
    assert [[c.token_ids for c in g] for g in shared] == [
        [c.token_ids for c in g] for g in alone.generate(prompts, n=2, max_new_tokens=8, temperature=1.0, seed=3)
    ]
    policy_says = pol.generate(prompts, n=1, max_new_tokens=8, temperature=1.0, seed=3)
    assert [g[0].token_ids for g in policy_says] != [g[0].token_ids for g in shared]  # the adapter is back on
    rows = [(pol.sampler.prompt_ids(p), g[0].token_ids) for p, g in zip(prompts, policy_says)]
    args = ([r[0] for r in rows], [r[1] for r in rows], pol.tok.pad_id, 4)
    off, two = sample_kl(pol.model, None, *args), sample_kl(pol.model, alone.model, *args)
    for a, b in zip(off["full"], two["full"]):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(t.abs().sum() > 0 for t in off["full"])


def test_a_missing_reward_model_is_refused_before_sampling(trained, tmp_path):
    result = CliRunner().invoke(app, ["eval", "metrics", "--model", trained["policy"], "--prompts",
                                      trained["prompts"], "--reward-model", str(tmp_path / "nope")])  # fmt: skip
    assert result.exit_code != 0 and "does not exist" in str(result.exception or result.output)
    assert "sampling" not in result.output
