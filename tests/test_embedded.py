"""Slow tests on the embedded SmolLM2-135M-Instruct (select with -m slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.data import Tokenizer, read_records, to_pairwise, tokenize_pairs, validate_records
from alignkit.data.collate import collate_pairs
from alignkit.logprobs import token_logprobs
from alignkit.models import load_model, load_tokenizer
from alignkit.models.embedded import embedded_model_dir
from alignkit.train import make_config, run
from alignkit.train.metrics import read_jsonl

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


def test_demo_job_writes_a_complete_report(tmp_path):
    """The main job on reduced settings: every artifact is written from measured numbers."""
    from alignkit.demo import run_demo

    out = tmp_path / "demo"
    summary = run_demo(
        str(out),
        ["train.max_steps=2", "train.eval_steps=2", "data.max_examples=8"],
        max_new_tokens=4,
        log=lambda *a: None,
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
    assert summary["pairs"] == 72 and summary["optimizer steps"] == 2
    assert 0.0 <= summary["mean_logp_accuracy_before"] <= 1.0 and summary["seconds per optimizer step"] > 0
    report = (out / "report.md").read_text()
    assert f"{summary['mean_logp_accuracy_before']:.3f}" in report and report.count("*before:*") == 8
