"""`accelerate launch --num_processes 2` on CPU (gloo): ranks stay identical and equal a 1-process run
on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.data.jsonl import read_jsonl

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, model_dir: str, data: str, out: Path, batch_size: int, method: str = "dpo", extra: str = ""):
    # On a machine without GPUs, accelerate spawns ranks (torchrun, gloo backend) only through its --multi_gpu
    # launcher; plain --num_processes 2 would run a single process.
    launcher = [sys.executable]
    if nproc > 1:
        launcher += [
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(nproc),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
        ]
    cmd = launcher + [str(WORKER), model_dir, data, str(out), str(batch_size), method]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent), "ALIGNKIT_EXTRA": extra}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.distributed
def test_two_processes_match_one_process(tiny_model_dir, pairs_file, tmp_path):
    _launch(2, tiny_model_dir, pairs_file, tmp_path / "ddp", batch_size=2)
    assert (tmp_path / "ddp" / "rank1.safetensors").is_file(), "the launcher did not start two ranks"
    _launch(1, tiny_model_dir, pairs_file, tmp_path / "single", batch_size=4)
    rank0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    init = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    for k in rank0:
        torch.testing.assert_close(rank0[k], rank1[k], atol=0, rtol=0)  # DDP keeps ranks bit-identical
        torch.testing.assert_close(rank0[k], single[k], atol=1e-4, rtol=0)  # Adam ~ lr*sign(g): see test_train
    assert max((rank0[k] - init[k]).abs().max().item() for k in rank0) > 1e-3
    ddp_rows, single_rows = (
        read_jsonl(tmp_path / "ddp" / "metrics.jsonl"),
        read_jsonl(tmp_path / "single" / "metrics.jsonl"),
    )
    assert len(ddp_rows) == len(single_rows) == 3
    for a, b in zip(ddp_rows, single_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-4, abs=1e-6)
        # tokens per step counts every process's tokens once
        assert a["tokens_per_second"] * a["seconds_per_step"] == pytest.approx(
            b["tokens_per_second"] * b["seconds_per_step"], rel=1e-6
        )


def _kto_file(tmp_path: Path) -> str:
    from helpers import write_jsonl

    records = [
        {
            "prompt": f"What is {i} plus {i + 1}?",
            "completion": f"It is {2 * i + 1}." if i % 2 else "No.",
            "label": bool(i % 2),
        }
        for i in range(16)
    ]
    return str(write_jsonl(tmp_path / "kto.jsonl", records))


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["kto", "rm"])
def test_two_processes_match_one_process_kto_and_rm(method, tiny_model_dir, pairs_file, tmp_path):
    """KTO's z_ref is all-reduced over processes and the reward model's head trains under DDP: 2 processes x 2
    examples give the same steps as 1 process x 4."""
    data = _kto_file(tmp_path) if method == "kto" else pairs_file
    _launch(2, tiny_model_dir, data, tmp_path / "ddp", batch_size=2, method=method)
    _launch(1, tiny_model_dir, data, tmp_path / "single", batch_size=4, method=method)
    rank0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    for k in rank0:
        torch.testing.assert_close(rank0[k], rank1[k], atol=0, rtol=0)
        torch.testing.assert_close(rank0[k], single[k], atol=1e-4, rtol=0)
    ddp_rows = read_jsonl(tmp_path / "ddp" / "metrics.jsonl")
    single_rows = read_jsonl(tmp_path / "single" / "metrics.jsonl")
    for a, b in zip(ddp_rows, single_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        if method == "kto":
            # float32 summation order: KL is a difference of per-sequence log-prob sums of order 10, so a reduction
            # in another order moves it by a few ulps of 10 (9.5e-7 seen at step 1, where the exact value is 0)
            assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=5e-6)


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_two_processes_match_one_process_online(method, word_model_dir, talker_dir, tmp_path):
    """GRPO / PPO with a reference, 2 passes x 2 minibatches: 2 processes (2 prompts each) sample the same completions
    and take the same steps as 1 process with all 4 prompts (PPO: whitened advantages over both processes, the
    separate value model under DDP, the same adaptive KL coefficient). GRPO runs multi-turn episodes in an
    environment (tests/envs.py), its reward plus the reward function's on the final message."""
    from helpers import write_jsonl

    words = "hi hello how is the weather today tell me a joke".split()
    data = str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": " ".join(words[i % 6 : i % 6 + 3])} for i in range(16)]))
    model_dir, extra = word_model_dir, ""
    if method == "grpo":
        model_dir = talker_dir
        extra = "rollout.environment=envs:Chatter rollout.max_tokens_per_turn=6 rollout.max_new_tokens=16"
    _launch(2, model_dir, data, tmp_path / "ddp", batch_size=4, method=method, extra=extra)
    _launch(1, model_dir, data, tmp_path / "single", batch_size=8, method=method, extra=extra)
    rank0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    for k in rank0:
        torch.testing.assert_close(rank0[k], rank1[k], atol=0, rtol=0)
        torch.testing.assert_close(rank0[k], single[k], atol=1e-4, rtol=0)
    for a, b in zip(read_jsonl(tmp_path / "ddp" / "metrics.jsonl"), read_jsonl(tmp_path / "single" / "metrics.jsonl")):
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], rel=1e-6)  # the same samples
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        if method == "grpo":
            assert a["kl/k3"] == pytest.approx(b["kl/k3"], rel=1e-3, abs=1e-7)
            assert a["episode/turns"] == b["episode/turns"] and a["episode/observation_tokens"] > 0
        else:
            assert a["kl/coef"] == pytest.approx(b["kl/coef"], rel=1e-6)
            assert a["loss/value"] == pytest.approx(b["loss/value"], rel=1e-3, abs=1e-7)
