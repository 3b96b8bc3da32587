"""Checkpoints: 2N steps in one go equal N steps + crash + resume N steps; atomic writes; keep-last-k."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_sections
from safetensors.torch import load_file

from alignkit.data.jsonl import read_jsonl
from alignkit.errors import UserError
from alignkit.train import make_config, run
from alignkit.train.checkpoint import list_checkpoints

QUIET = {"log": lambda *a, **k: None}


class Crash(Exception):
    pass


def _cfg(model_dir, data, out, lora=None, **train):
    sections = tiny_sections(
        model_dir, data, out, max_steps=6, save_steps=3, lr_scheduler="cosine", warmup_ratio=0.2, **train
    )
    if lora:
        sections["lora"] = lora
    return make_config("dpo", **sections)


def _crash_after(step):
    def callback(state, metrics):
        if state.step == step:
            raise Crash()

    return callback


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.1}])  # LoRA dropout makes RNG state matter
def test_resume_continues_exactly(lora, tiny_model_dir, pairs_file, tmp_path):
    whole = run("dpo", _cfg(tiny_model_dir, pairs_file, tmp_path / "whole", lora), **QUIET)
    with pytest.raises(Crash):
        run("dpo", _cfg(tiny_model_dir, pairs_file, tmp_path / "split", lora), callbacks=[_crash_after(4)], **QUIET)
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["ckpt-0000003"]
    resumed = run("dpo", _cfg(tiny_model_dir, pairs_file, tmp_path / "split", lora), resume=True, **QUIET)
    assert resumed.steps == whole.steps == 6
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(str(whole.model_dir / name)), load_file(str(resumed.model_dir / name))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    rows_whole = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    rows_split = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rows_split] == [1, 2, 3, 4, 5, 6]  # the crashed run's step 4 was replaced
    for ra, rb in zip(rows_whole, rows_split):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)
        assert ra["learning_rate"] == pytest.approx(rb["learning_rate"], rel=1e-9)


def test_resume_after_sigkill_from_the_cli(tiny_model_dir, pairs_file, tmp_path):
    """A real kill -9 mid-run: the checkpoint on disk is complete and resuming finishes the run."""
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "alignkit",
        "train",
        "dpo",
        "--set",
        f"model.name={tiny_model_dir}",
        "--set",
        "model.device=cpu",
        "--set",
        f"data.train={pairs_file}",
        "--set",
        "data.max_length=64",
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_steps=400",
        "--set",
        "train.save_steps=2",
        "--set",
        "train.keep_last=2",
        "--set",
        "train.logging_steps=1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(out)) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpts = list_checkpoints(out)
    assert ckpts, "no checkpoint was written before the kill"
    last = json.loads((ckpts[-1] / "state.json").read_text())["step"]
    assert len(ckpts) <= 2  # keep_last
    cfg = make_config(
        "dpo",
        overrides=[a.split("=", 1)[0] + "=" + a.split("=", 1)[1] for a in args[6::2]]
        + ["train.max_steps=" + str(last + 2)],
    )
    result = run("dpo", cfg, resume=True, **QUIET)
    assert result.steps == last + 2
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, last + 3))


def test_resume_with_a_different_global_batch_is_refused(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(Crash):
        run("dpo", _cfg(tiny_model_dir, pairs_file, tmp_path / "r"), callbacks=[_crash_after(3)], **QUIET)
    with pytest.raises(UserError, match="global_batch"):
        run("dpo", _cfg(tiny_model_dir, pairs_file, tmp_path / "r", batch_size=2), resume=True, **QUIET)


def test_resume_without_checkpoint_is_a_clear_error(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        run("dpo", _cfg(tiny_model_dir, pairs_file, tmp_path / "none"), resume=True, **QUIET)


def test_interrupted_checkpoint_write_is_ignored(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "tmpdir"
    with pytest.raises(Crash):
        run("dpo", _cfg(tiny_model_dir, pairs_file, out), callbacks=[_crash_after(4)], **QUIET)
    (out / ".ckpt-0000005.tmp").mkdir()  # what a write killed before its rename leaves behind
    (out / ".ckpt-0000005.tmp" / "trainable.safetensors").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-0000003"]
    assert run("dpo", _cfg(tiny_model_dir, pairs_file, out), resume=True, **QUIET).steps == 6
