"""The shared loop with every method on a tiny model: outputs, reference handling, exact batch splitting,
early stopping, NaN handling."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_sections
from safetensors.torch import load_file

from alignkit.data.jsonl import read_jsonl
from alignkit.errors import TrainingDiverged, UserError
from alignkit.train import loop as loop_module
from alignkit.train import make_config, run
from alignkit.train.methods.preference import PreferenceMethod
from alignkit.train.reference import Reference

QUIET = {"log": lambda *a, **k: None}


def _train(method: str, model_dir: str, data: str, out: Path, lora=None, method_cfg=None, **train):
    sections = tiny_sections(model_dir, data, out, **train)
    if lora is not None:
        sections["lora"] = lora
    if method_cfg:
        sections["method"] = method_cfg
    return run(method, make_config(method, **sections), **QUIET)


@pytest.mark.parametrize("method", ["dpo", "ipo", "hinge", "robust", "simpo", "orpo"])
def test_preference_methods_train_and_log(method, tiny_model_dir, pairs_file, tmp_path):
    cfg = {"label_smoothing": 0.1} if method == "robust" else None
    result = _train(method, tiny_model_dir, pairs_file, tmp_path / method, lora={"r": 4}, method_cfg=cfg)
    rows = read_jsonl(tmp_path / method / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "learning_rate",
        "tokens_per_second",
    ):
        assert math.isfinite(rows[-1][key]), key
    assert ("kl/chosen" in rows[0]) == (method not in ("simpo", "orpo"))
    assert (result.model_dir / "adapter_config.json").is_file()
    if method in ("dpo", "robust"):  # policy == reference at step 1: h = 0
        # robust at h = 0: ((1 - e) - e) log 2 / (1 - 2e) = log 2 as well
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_sft_trains_on_completions(tiny_model_dir, sft_file, tmp_path):
    result = _train("sft", tiny_model_dir, sft_file, tmp_path / "sft", max_steps=6, learning_rate=3e-3)
    rows = read_jsonl(tmp_path / "sft" / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (result.model_dir / "model.safetensors").is_file()  # full fine-tuning saves the whole model


def test_dpo_learns_the_preference(tiny_model_dir, pairs_file, tmp_path):
    _train(
        "dpo", tiny_model_dir, pairs_file, tmp_path / "r", max_steps=12, learning_rate=5e-3, method_cfg={"beta": 0.5}
    )
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.2
    assert rows[-1]["rewards/margins"] > 0.5


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_live_reference_equals_precomputed(lora, tiny_model_dir, pairs_file, tmp_path):
    """Precomputed reference log-probs change how they are produced, not the training trajectory."""
    results = {}
    for mode in ("precompute", "live"):
        _train("dpo", tiny_model_dir, pairs_file, tmp_path / mode, lora=lora, method_cfg={"reference": mode})
        results[mode] = read_jsonl(tmp_path / mode / "metrics.jsonl")
    for a, b in zip(results["precompute"], results["live"]):
        for key in ("loss", "rewards/margins", "kl/chosen"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key


def test_reference_free_losses_never_run_a_reference(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("reference forward on a reference-free loss")

    monkeypatch.setattr(Reference, "__init__", boom)
    monkeypatch.setattr(Reference, "logps", boom)
    for method in ("simpo", "orpo"):
        _train(method, tiny_model_dir, pairs_file, tmp_path / method)


def assert_same_run(run_a: Path, run_b: Path, initial_dir: str) -> None:
    """Same losses and gradient norms (tight), same weights within 1e-4 and moved far more than that.

    Weights get a looser tolerance because Adam's first update is ~lr * sign(g): coordinates whose gradient
    is ~0 flip with rounding. A wrong weighting changes the gradient, which grad_norm catches tightly.
    """
    for ra, rb in zip(read_jsonl(run_a / "metrics.jsonl"), read_jsonl(run_b / "metrics.jsonl")):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)
    a = load_file(str(run_a / "model" / "model.safetensors"))
    b = load_file(str(run_b / "model" / "model.safetensors"))
    init = load_file(str(Path(initial_dir) / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, pairs_file, tmp_path):
    _train("dpo", tiny_model_dir, pairs_file, tmp_path / "big", batch_size=4, grad_accum=1, max_steps=2)
    _train("dpo", tiny_model_dir, pairs_file, tmp_path / "acc", batch_size=2, grad_accum=2, max_steps=2)
    assert_same_run(tmp_path / "big", tmp_path / "acc", tiny_model_dir)


def test_sft_token_weighting_is_split_invariant(tiny_model_dir, sft_file, tmp_path):
    """SFT averages over all completion tokens of the global batch, however it is split."""
    _train("sft", tiny_model_dir, sft_file, tmp_path / "big", batch_size=4, grad_accum=1, max_steps=2)
    _train("sft", tiny_model_dir, sft_file, tmp_path / "acc", batch_size=1, grad_accum=4, max_steps=2)
    assert_same_run(tmp_path / "big", tmp_path / "acc", tiny_model_dir)


def test_eval_split_and_early_stopping(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    script = iter([{"eval/loss": v} for v in (1.0, 0.9, 0.95, 0.97, 0.5, 0.4)])
    monkeypatch.setattr(loop_module, "evaluate", lambda *a, **k: next(script))
    sections = tiny_sections(
        tiny_model_dir, pairs_file, tmp_path / "es", max_steps=6, eval_steps=1, early_stopping_patience=2
    )
    sections["data"]["eval_fraction"] = 0.2
    result = run("dpo", make_config("dpo", **sections), **QUIET)
    assert result.stopped_early and result.steps == 4
    evals = [r for r in read_jsonl(tmp_path / "es" / "metrics.jsonl") if "eval/loss" in r]
    assert [r["eval/loss"] for r in evals] == [1.0, 0.9, 0.95, 0.97]


def test_real_eval_metrics_on_held_out_fraction(tiny_model_dir, pairs_file, tmp_path):
    sections = tiny_sections(tiny_model_dir, pairs_file, tmp_path / "ev", eval_steps=2, max_steps=2)
    sections["data"]["eval_fraction"] = 0.25
    result = run("dpo", make_config("dpo", **sections), **QUIET)
    assert result.eval_metrics["eval/loss"] > 0
    assert 0.0 <= result.eval_metrics["eval/rewards/accuracies"] <= 1.0


def test_early_stopping_without_eval_data_is_a_clear_error(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(UserError, match="early_stopping_patience is set but there is no eval data"):
        _train("dpo", tiny_model_dir, pairs_file, tmp_path / "x", early_stopping_patience=2)


def test_too_few_examples_for_a_batch_is_a_clear_error(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(UserError, match="fewer than one global batch"):
        _train("dpo", tiny_model_dir, pairs_file, tmp_path / "x", batch_size=16, grad_accum=2)


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    real_loss = PreferenceMethod.loss
    calls = {"n": 0}

    def loss_going_nan(self, module, batch):
        calls["n"] += 1
        losses, metrics = real_loss(self, module, batch)
        return (losses * float("nan") if calls["n"] == 3 else losses), metrics

    monkeypatch.setattr(PreferenceMethod, "loss", loss_going_nan)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="step 3.*ckpt-0000002 is intact"):
        _train("dpo", tiny_model_dir, pairs_file, out, max_steps=5, save_steps=2, keep_last=3)
    ckpts = sorted(p.name for p in out.glob("ckpt-*"))
    assert ckpts == ["ckpt-0000002"]
    state = json.loads((out / "ckpt-0000002" / "state.json").read_text())
    assert state["step"] == 2
    assert load_file(str(out / "ckpt-0000002" / "trainable.safetensors"))  # readable
    assert not (out / "model").exists()  # no final model from a diverged run


def test_tensorboard_tracker_through_accelerate(tiny_model_dir, pairs_file, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra; without it trackers are not tested")
    _train("dpo", tiny_model_dir, pairs_file, tmp_path / "tb", report_to=["tensorboard"], max_steps=2)
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (tmp_path / "tb" / "metrics.jsonl").is_file()  # JSONL is written with trackers too


def test_overwrite_starts_afresh_and_drops_old_checkpoints(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "ow"
    _train("dpo", tiny_model_dir, pairs_file, out, max_steps=2, save_steps=1)
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-0000001", "ckpt-0000002"]
    with pytest.raises(UserError, match="already holds a run"):
        _train("dpo", tiny_model_dir, pairs_file, out, max_steps=2)
    _train("dpo", tiny_model_dir, pairs_file, out, max_steps=1, overwrite=True)
    assert not list(out.glob("ckpt-*"))
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]


def test_data_order_shuffle_and_file_order():
    from alignkit.train.loop import global_batch_indices

    shuffled = [global_batch_indices(10, s, 4, seed=0) for s in range(4)]
    assert sorted(shuffled[0] + shuffled[1]) != list(range(8))  # shuffled within the epoch
    assert len(set(shuffled[0] + shuffled[1])) == 8  # no repeats within an epoch
    assert global_batch_indices(10, 3, 4, seed=0) == shuffled[3]  # a pure function of (seed, step)
    in_order = [global_batch_indices(10, s, 4, seed=0, shuffle=False) for s in range(3)]
    assert in_order == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]  # epoch 2 starts over; the tail is dropped


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.0}])
def test_prefix_sharing_trains_like_the_plain_layout(lora, tiny_model_dir, pairs_file, tmp_path):
    """Same losses, metrics, token counts and weights with one sequence per pair (prompt once), padded rows or all
    pairs packed in one row (also under gradient checkpointing, which recomputes the per-pair attention), as with
    two rows per pair."""
    layouts = {
        "plain": {"prefix_sharing": False},
        "shared": {"packing": False},
        "packed": {},
        "packed-checkpointed": {"gradient_checkpointing": True},
    }
    runs = [_train("dpo", tiny_model_dir, pairs_file, tmp_path / name, lora=lora, **kw) for name, kw in layouts.items()]
    for other in runs[1:]:
        for a, b in zip(runs[0].history, other.history):
            for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
            assert a["tokens_per_second"] * a["seconds_per_step"] == pytest.approx(
                b["tokens_per_second"] * b["seconds_per_step"], rel=1e-9
            )
    weights = [load_file(r.model_dir / ("adapter_model.safetensors" if lora else "model.safetensors")) for r in runs]
    for w in weights[1:]:
        for name, value in weights[0].items():
            torch.testing.assert_close(value, w[name], atol=1e-4, rtol=0)


def test_reference_logprobs_are_cached_on_disk(tiny_model_dir, pairs_file, tmp_path, reference_cache_dir):
    logs = []
    sections = tiny_sections(tiny_model_dir, pairs_file, tmp_path / "a")
    first = run("dpo", make_config("dpo", **sections), log=logs.append)
    assert any("computed for" in str(line) for line in logs)
    assert len(list(reference_cache_dir.glob("*.pt"))) == 1
    logs.clear()
    sections["train"]["output_dir"] = str(tmp_path / "b")
    second = run("dpo", make_config("dpo", **sections), log=logs.append)
    assert any("reused from the cache" in str(line) for line in logs)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    # other data (or another precision, model, layout) is another key
    sections["data"]["max_length"] = 32
    sections["train"]["output_dir"] = str(tmp_path / "c")
    run("dpo", make_config("dpo", **sections), log=logs.append)
    assert len(list(reference_cache_dir.glob("*.pt"))) == 2
    sections["method"] = {"reference_cache": False}
    sections["train"]["output_dir"] = str(tmp_path / "d")
    logs.clear()
    run("dpo", make_config("dpo", **sections), log=logs.append)
    assert any("computed for" in str(line) for line in logs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in():
    """After keep_freed_memory(), a 64 MiB buffer allocated and freed over and over (like a training step's logits)
    reuses its pages: no fresh page faults once the heap has grown (glibc's default unmaps it on every free and
    faults its 16k pages back in on every allocation)."""
    import resource

    from alignkit.models.cpu_memory import keep_freed_memory

    assert keep_freed_memory() and keep_freed_memory()  # applies once, then a no-op
    n = 16 * 2**20  # 64 MiB of float32
    for _ in range(3):
        torch.ones(n)  # grows the heap (faults the first times), then freed
    faults = []
    for _ in range(5):  # the median: a one-off fault burst elsewhere in the process (other threads) does not count
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(n)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        assert float(x[-1]) == 1.0
        del x
    assert sorted(faults)[2] < 1000, faults
    # given back: glibc's defaults again, so a big block is mapped fresh (and returned on free) each time
    from alignkit.models.cpu_memory import give_back_freed_memory

    assert give_back_freed_memory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(n)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > n * 4 // 4096 // 2  # its pages fault in
    del x


def test_fit_releases_its_optimizer_state(tiny_model_dir, pairs_file, tmp_path):
    """When fit returns, no optimizer (nor its Adam moments) is left alive: accelerate's references to what it
    prepared are dropped too, so evaluation after training runs without the training state in memory."""
    import gc

    from alignkit.train.run import prepare

    cfg = make_config("dpo", **tiny_sections(tiny_model_dir, pairs_file, tmp_path / "o", max_steps=2, overwrite=True))
    p = prepare("dpo", cfg, **QUIET)
    loop_module.fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, **QUIET)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)]
    loop_module.fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, **QUIET)
    gc.collect()  # a second fit on the same accelerator (the loop's rounds) does not pile them up either
    assert not [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)]


def test_onednn_cache_bound_from_setting_and_env(monkeypatch):
    """The bf16 kernel caches get a bound (default 64) unless the user set oneDNN's variables or said 'default';
    a bad value is one clear error naming the variable."""
    from alignkit.models.cpu_memory import ONEDNN_CACHE_ENV, bound_onednn_caches

    for var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY", ONEDNN_CACHE_ENV):
        monkeypatch.delenv(var, raising=False)
    assert bound_onednn_caches() == 64
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == os.environ["LRU_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")  # set by the user: kept
    monkeypatch.setenv(ONEDNN_CACHE_ENV, "16")
    assert bound_onednn_caches() == 16 and os.environ["LRU_CACHE_CAPACITY"] == "7"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv(ONEDNN_CACHE_ENV, "default")
    assert bound_onednn_caches() is None and "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    for bad in ("0", "lots"):
        monkeypatch.setenv(ONEDNN_CACHE_ENV, bad)
        with pytest.raises(UserError, match=ONEDNN_CACHE_ENV):
            bound_onednn_caches()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_evaluation_runs_with_freed_memory_given_back():
    """The loop's evaluation runs with glibc's defaults and the loop keeps freed memory again afterwards; outside a
    kept region the context changes nothing."""
    from alignkit.models import cpu_memory

    assert cpu_memory.keep_freed_memory()
    with cpu_memory.freed_memory_given_back():
        assert not cpu_memory._kept
    assert cpu_memory._kept
    cpu_memory.give_back_freed_memory()
    with cpu_memory.freed_memory_given_back():
        assert not cpu_memory._kept
    assert not cpu_memory._kept
