"""KTO on the tiny model: the loss at initialization, reference modes, mismatched KL rows, class balance."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_sections
from helpers import write_jsonl

from alignkit.data import Tokenizer, collate_kto, tokenize_kto
from alignkit.data.formats import to_binary
from alignkit.data.jsonl import read_jsonl
from alignkit.train import make_config, run


def feedback(n: int, share_up: float = 0.5) -> list[dict]:
    n_up = round(n * share_up)
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} plus {i + 1}?"}],
            "completion": [
                {"role": "assistant", "content": f"It is {2 * i + 1}." if i < n_up else "No idea, go away."}
            ],
            "label": i < n_up,
        }
        for i in range(n)
    ]


def _run(model_dir, data, out, lora=None, method=None, logs=None, **train):
    sections = tiny_sections(model_dir, data, out, **train)
    if lora:
        sections["lora"] = lora
    if method:
        sections["method"] = method
    return run("kto", make_config("kto", **sections), log=(logs.append if logs is not None else lambda *a: None))


def test_kto_trains_and_logs(tiny_model_dir, tmp_path):
    data = str(write_jsonl(tmp_path / "fb.jsonl", feedback(24)))
    _run(tiny_model_dir, data, tmp_path / "r", batch_size=8, max_steps=8, learning_rate=5e-3, method={"beta": 0.5})
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    # policy == reference at step 1: r = 0 and z_ref = 0, so every loss is lambda * (1 - sigma(0)) = 0.5
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-5) and rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    for key in (
        "rewards/desirable",
        "rewards/undesirable",
        "logps/desirable",
        "logps/undesirable",
        "rewards/accuracies",
        "kl",
        "grad_norm",
    ):
        assert math.isfinite(rows[-1][key]), key
    assert all(r["kl"] >= 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["rewards/desirable"] > rows[-1]["rewards/undesirable"]


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_live_reference_equals_precomputed(lora, tiny_model_dir, tmp_path):
    data = str(write_jsonl(tmp_path / "fb.jsonl", feedback(16)))
    runs = {}
    for mode in ("precompute", "live"):
        _run(tiny_model_dir, data, tmp_path / mode, lora=lora, method={"reference": mode}, max_steps=3)
        runs[mode] = read_jsonl(tmp_path / mode / "metrics.jsonl")
    for a, b in zip(runs["precompute"], runs["live"]):
        for key in ("loss", "kl", "rewards/accuracies"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key


def test_kl_rows_pair_each_prompt_with_another_completion(embedded_tokenizer):
    tok = Tokenizer(embedded_tokenizer)
    examples = [to_binary(r, f"fb:{i}") for i, r in enumerate(feedback(3))]
    items, _ = tokenize_kto(examples, tok, max_length=40, max_prompt_length=None)
    assert [x.kl_completion_ids for x in items] == [
        items[1].completion_ids,
        items[2].completion_ids,
        items[0].completion_ids,
    ]
    assert all(len(x.prompt_ids) + len(x.kl_completion_ids) <= 40 for x in items)
    batch = collate_kto(items, tok.pad_id)
    assert batch["input_ids"].shape[0] == 6 and batch["labels"].tolist() == [True, True, False]
    row = batch["input_ids"][3][batch["completion_mask"][3].bool()].tolist()
    assert row == items[1].completion_ids  # row B + 0: prompt 0 with item 1's completion


def test_class_imbalance_warning_names_the_fix(tiny_model_dir, tmp_path):
    data = str(write_jsonl(tmp_path / "fb.jsonl", feedback(20, share_up=0.2)))  # 4 up, 16 down
    logs = []
    _run(tiny_model_dir, data, tmp_path / "w", logs=logs, max_steps=1)
    [warning] = [line for line in logs if line.startswith("warning: 4 desirable vs 16 undesirable")]
    assert "method.desirable_weight between 4.00 and 5.33" in warning
    logs.clear()
    _run(tiny_model_dir, data, tmp_path / "ok", logs=logs, max_steps=1, method={"desirable_weight": 4.5})
    assert not [line for line in logs if line.startswith("warning")]


def test_kto_rejects_non_boolean_labels(tiny_model_dir, tmp_path):
    from alignkit.errors import DataError

    records = feedback(8)
    records[3]["label"] = "yes"
    data = str(write_jsonl(tmp_path / "fb.jsonl", records))
    with pytest.raises(DataError, match=r"fb.jsonl:4: field 'label': is 'yes'"):
        _run(tiny_model_dir, data, tmp_path / "bad", max_steps=1)
