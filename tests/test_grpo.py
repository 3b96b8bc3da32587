"""GRPO / RLOO / REINFORCE++ in the shared loop on tiny models: learning, exact resume, normalization independent of
accumulation, padding, masking of missing rewards, a hanging reward function, KL to a reference, several passes,
dynamic sampling, overlong handling, and bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import Crash, crash_at, online_config, write_jsonl
from safetensors.torch import load_file

from alignkit.data.jsonl import read_jsonl
from alignkit.errors import ConfigError, UserError
from alignkit.train import run

QUIET = {"log": lambda *a, **k: None}


def prompts_file(tmp_path: Path, n: int = 16, **columns) -> str:
    words = "hi hello how is the weather today tell me a joke".split()
    records = [
        {"prompt": " ".join(words[i % 5 : i % 5 + 4]), **{k: v(i) for k, v in columns.items()}} for i in range(n)
    ]
    return str(write_jsonl(tmp_path / "prompts.jsonl", records))


def grpo_config(model_dir: str, data_file: str, out: Path, command: str = "grpo", **sections):
    rollout = {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12}
    method = {"rewards": ["reward_fns:yes_share"], "reward_workers": 0}
    return online_config(command, model_dir, data_file, out, {"rollout": rollout, "method": method}, **sections)


def weights(result) -> dict:
    return load_file(str(result.model_dir / "model.safetensors"))


@pytest.mark.parametrize("method, advantage", [("grpo", None), ("rloo", None), ("grpo", "reinforce_pp")])
def test_policy_learns_a_verifiable_reward(method, advantage, word_model_dir, tmp_path):
    extra = {"advantage": advantage} if advantage else {}
    cfg = grpo_config(word_model_dir, prompts_file(tmp_path), tmp_path / "run", method,
                      train={"max_steps": 12}, method=extra)  # fmt: skip
    result = run(method, cfg, **QUIET)
    rows = [r for r in result.history if "reward/mean" in r]
    first, last = sum(r["reward/mean"] for r in rows[:3]) / 3, sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert last > first + 0.1, [round(r["reward/mean"], 3) for r in rows]
    assert result.model_dir.joinpath("model.safetensors").is_file()
    for key in ("time/generate", "time/reward", "time/reference", "time/train", "entropy", "clip/low", "clip/high",
                "completion/length", "completion/truncated", "groups/zero_variance", "logprobs/sampler_mismatch",
                "rewards/yes_share/mean", "generation/tokens_per_second"):  # fmt: skip
        assert key in rows[0], key
    assert rows[0]["logprobs/sampler_mismatch"] < 1e-4  # fp32: the sampler scores what the trainer scores


def test_resume_equals_an_uninterrupted_run(word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    common = {"train": {"max_steps": 4, "save_steps": 2}, "method": {"beta": 0.05}}
    whole = run("grpo", grpo_config(word_model_dir, data, tmp_path / "whole", **common), **QUIET)
    with pytest.raises(Crash):
        run("grpo", grpo_config(word_model_dir, data, tmp_path / "split", **common), callbacks=[crash_at(3)], **QUIET)
    resumed = run("grpo", grpo_config(word_model_dir, data, tmp_path / "split", **common), resume=True, **QUIET)
    a, b = weights(whole), weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    rows_a, rows_b = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["reward/mean"] == pytest.approx(rb["reward/mean"], abs=1e-9)  # the same samples after resume
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_accumulation_does_not_change_the_step(aggregation, word_model_dir, tmp_path):
    """16 completions per step in one forward or in four micro-batches of 4: the same normalized loss and update."""
    data = prompts_file(tmp_path)
    runs = [
        run(
            "grpo",
            grpo_config(
                word_model_dir,
                data,
                tmp_path / f"bs{bs}",
                train={"batch_size": bs},
                method={"loss_aggregation": aggregation},
            ),
            **QUIET,
        )  # fmt: skip
        for bs in (16, 4)
    ]
    a, b = weights(runs[0]), weights(runs[1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    for ra, rb in zip(runs[0].history, runs[1].history):
        if "loss" in ra:
            assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.0}])
def test_prefix_shared_groups_train_like_the_padded_layout(lora, word_model_dir, tmp_path):
    """Each group's prompt encoded once, all groups packed in one row with attention per group: the same losses,
    metrics and update as one padded row per completion."""
    data = prompts_file(tmp_path)
    extra = {"lora": lora} if lora else {}
    runs = [
        run(
            "grpo",
            grpo_config(
                word_model_dir,
                data,
                tmp_path / f"shared-{flag}",
                train={"prefix_sharing": flag},
                method={"beta": 0.05, "iterations": 2},
                **extra,
            ),
            **QUIET,
        )  # fmt: skip
        for flag in (True, False)
    ]
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = (load_file(str(r.model_dir / name)) for r in runs)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=0)
    for ra, rb in zip(runs[0].history, runs[1].history):
        for key in ("loss", "entropy", "kl/k3", "reward/mean"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
        assert ra["tokens_per_second"] * ra["seconds_per_step"] == pytest.approx(
            rb["tokens_per_second"] * rb["seconds_per_step"], rel=1e-6
        )  # the same tokens are counted in both layouts


def test_padding_does_not_change_the_loss(word_model_dir, tmp_path):
    """A sample's loss is the same alone and next to a longer (padded-against) sample."""
    from alignkit.data import Sample, collate_samples
    from alignkit.train.run import prepare

    cfg = grpo_config(word_model_dir, prompts_file(tmp_path), tmp_path / "pad")
    p = prepare("grpo", cfg, **QUIET)
    method = p.method
    method.setup(p.model, p.train_items, [], p.accelerator)
    module = method.wrap(p.model)
    short = Sample([5, 6, 7], [8, 9], [-1.0, -2.0], "eos", "", 0, 1.0, [0.7], old_logps=[-1.5, -2.5])
    long = Sample([5, 6, 7, 10, 11], [8, 9, 12, 13, 14], [-1.0] * 5, "length", "", 1, 0.0, [-0.7], [-1.0] * 5)
    alone, _ = method.loss(module, collate_samples([short], 0))
    together, _ = method.loss(module, collate_samples([short, long], 0))
    torch.testing.assert_close(alone[0], together[0])
    method.finish(None, [], [], {})


def test_missing_rewards_are_masked_and_counted(word_model_dir, tmp_path):
    data = prompts_file(tmp_path, skip=lambda i: i % 2 == 0)
    cfg = grpo_config(word_model_dir, data, tmp_path / "none", method={"rewards": ["reward_fns:none_where"]})
    result = run("grpo", cfg, **QUIET)
    row = result.history[0]
    assert row["rewards/masked"] == pytest.approx(8.0)  # half the prompts x 4 samples, as a per-step count
    assert row["rewards/none_where/none"] == pytest.approx(8.0)


def test_a_hanging_reward_function_does_not_stall_training(word_model_dir, tmp_path):
    """Reward functions run in worker processes with a timeout: the hanging prompt's samples are masked (an
    infrastructure error, reported apart from wrong answers) and training goes on."""
    data = prompts_file(tmp_path, hang=lambda i: i == 0)
    cfg = grpo_config(
        word_model_dir, data, tmp_path / "hang", train={"max_steps": 2, "shuffle": False},
        method={"rewards": [{"function": "reward_fns:hang_where", "timeout": 3}], "reward_workers": 2},
    )  # fmt: skip
    result = run("grpo", cfg, **QUIET)
    first = result.history[0]
    assert first["rewards/hang_where/timeouts"] >= 4  # prompt 0's samples; the others were retried and scored
    assert first["rewards/masked"] == first["rewards/hang_where/timeouts"]
    assert result.steps == 2


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.1}])
def test_kl_to_the_reference_in_loss_and_in_reward(lora, word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    for kl_in in ("loss", "reward"):
        sections = {
            "method": {"beta": 0.1, "kl_in": kl_in},
            "train": {"max_steps": 4},
            **({"lora": lora} if lora else {}),
        }
        cfg = grpo_config(word_model_dir, data, tmp_path / f"kl-{kl_in}-{bool(lora)}", **sections)
        rows = run("grpo", cfg, **QUIET).history
        assert rows[0]["kl/k1"] == pytest.approx(0.0, abs=1e-5)  # step 1 trains the reference itself
        assert rows[-1]["kl/k3"] > 1e-5 and rows[-1]["kl/sequence"] > 0  # later steps have drifted


def test_several_passes_and_minibatches(word_model_dir, tmp_path):
    """2 passes x 2 minibatches = 4 optimizer steps per rollout, pi_old recomputed after sampling: the ratio moves
    away from 1 and the clip engages. The sampler/trainer gap is logged; the rollout correction leaves a run without
    gap as it is."""
    cfg = grpo_config(word_model_dir, prompts_file(tmp_path), tmp_path / "passes", train={"learning_rate": 3e-2},
                      method={"iterations": 2, "minibatches": 2, "clip_high": 0.28})  # fmt: skip
    result = run("grpo", cfg, **QUIET)
    rows = [r for r in result.history if "loss" in r]
    assert max(r["policy/approx_kl"] for r in rows) > 0
    assert max(r["clip/low"] + r["clip/high"] for r in rows) > 0
    assert max(r["rollout/logprob_gap"] for r in rows) < 1e-4  # pi_old recomputed = the sampler's, in fp32
    sampler = run("grpo", grpo_config(word_model_dir, prompts_file(tmp_path), tmp_path / "sampler-old",
                                      method={"iterations": 2, "old_logprobs": "sampler", "rollout_correction": "mask",
                                              "rollout_correction_level": "sequence"}), **QUIET)  # fmt: skip
    assert sampler.steps == 3
    rows = [r for r in sampler.history if "loss" in r]
    assert all(r["rollout/correction_weight"] == pytest.approx(1.0) and r["rollout/correction_dropped"] == 0
               for r in rows)  # no gap, nothing corrected  # fmt: skip


def test_dynamic_sampling_refills_flat_groups(word_model_dir, tmp_path):
    """Prompts whose every sample gets the same reward (here: none at all) are replaced by others of the set."""
    data = prompts_file(tmp_path, n=32, skip=lambda i: i % 2 == 0)
    cfg = grpo_config(word_model_dir, data, tmp_path / "dyn", train={"max_steps": 2},
                      method={"rewards": ["reward_fns:none_where"], "dynamic_sampling": True})  # fmt: skip
    rows = run("grpo", cfg, **QUIET).history
    assert sum(r["groups/resampled"] for r in rows) > 0
    assert all(r["rewards/masked"] < 8 for r in rows)  # without the refill half the 16 samples would be masked


@pytest.mark.parametrize("overlong", ["mask", "penalty"])
def test_overlong_completions(overlong, word_model_dir, tmp_path):
    cfg = grpo_config(word_model_dir, prompts_file(tmp_path), tmp_path / overlong, train={"max_steps": 1},
                      rollout={"max_new_tokens": 4}, method={"overlong": overlong, "overlong_buffer": 2})  # fmt: skip
    row = run("grpo", cfg, **QUIET).history[0]
    assert row["completion/truncated"] > 0.5  # 4 tokens: most completions are cut
    if overlong == "penalty":
        assert row["reward/mean"] < row["rewards/yes_share/mean"]  # the penalty came off the reward


def test_bad_online_configs(word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    with pytest.raises(ConfigError, match="method.rewards is empty"):
        grpo_config(word_model_dir, data, tmp_path / "x", method={"rewards": []})
    with pytest.raises(ConfigError, match="train.grad_accum"):
        grpo_config(word_model_dir, data, tmp_path / "x", train={"grad_accum": 2})
    with pytest.raises(ConfigError, match="rollout.temperature"):
        grpo_config(word_model_dir, data, tmp_path / "x", rollout={"temperature": 0})
    with pytest.raises(ConfigError, match="max_new_tokens"):
        grpo_config(word_model_dir, data, tmp_path / "x", data={"max_length": 16}, rollout={"max_new_tokens": 12})
    with pytest.raises(ConfigError, match="prompts_per_step=4 does not split.*minibatches=3"):
        run("grpo", grpo_config(word_model_dir, data, tmp_path / "x", method={"minibatches": 3}), **QUIET)
    with pytest.raises(UserError, match="no module named 'nope'"):
        run("grpo", grpo_config(word_model_dir, data, tmp_path / "y", method={"rewards": ["nope:f"]}), **QUIET)
    with pytest.raises(ConfigError, match="method.ref_model is set but method.beta is 0"):
        grpo_config(word_model_dir, data, tmp_path / "x", method={"ref_model": word_model_dir})


def test_prompt_field_and_template(word_model_dir, tmp_path):
    """GSM8K-style records: the prompt comes from another field through a template; the rest are reward columns."""
    records = [{"question": "how is the weather", "answer": "yes"} for _ in range(8)]
    data = str(write_jsonl(tmp_path / "q.jsonl", records))
    cfg = grpo_config(word_model_dir, data, tmp_path / "tpl", train={"max_steps": 1},
                      data={"prompt_field": "question", "prompt_template": "tell me : {question} ?"},
                      method={"rewards": ["reward_fns:answer_is"]})  # fmt: skip
    row = run("grpo", cfg, **QUIET).history[0]
    assert row["rewards/answer_is/none"] == 0  # the answer column reached the reward function
    bad = grpo_config(word_model_dir, data, tmp_path / "tpl2", data={"prompt_field": "question",
                                                                     "prompt_template": "{nothing}"})  # fmt: skip
    with pytest.raises(UserError, match="q.jsonl:1: field 'nothing'.*prompt_template"):
        run("grpo", bad, **QUIET)
    plain = grpo_config(word_model_dir, data, tmp_path / "tpl3")
    with pytest.raises(UserError, match="field 'prompt': is missing.*question.*data.prompt_field"):
        run("grpo", plain, **QUIET)


def test_nan_stops_an_online_run_and_keeps_the_checkpoint(word_model_dir, tmp_path, monkeypatch):
    from alignkit.errors import TrainingDiverged
    from alignkit.train.online.grpo import GRPOMethod

    original = GRPOMethod.loss
    calls = {"n": 0}

    def loss_going_nan(self, module, batch):
        calls["n"] += 1
        losses, metrics = original(self, module, batch)
        return (losses * float("nan") if calls["n"] >= 3 else losses), metrics

    monkeypatch.setattr(GRPOMethod, "loss", loss_going_nan)
    out = tmp_path / "nan"
    cfg = grpo_config(word_model_dir, prompts_file(tmp_path), out, train={"max_steps": 4, "save_steps": 1,
                                                                            "batch_size": 16})  # fmt: skip
    with pytest.raises(TrainingDiverged, match="step 3.*ckpt-0000002 is intact"):
        run("grpo", cfg, **QUIET)
    assert not (out / "model").exists()


def test_early_stopping_on_a_held_out_reward(word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    cfg = grpo_config(word_model_dir, data, tmp_path / "early", data={"eval": data},
                      train={"max_steps": 20, "eval_steps": 1, "early_stopping_patience": 1,
                             "early_stopping_metric": "eval/reward/mean", "learning_rate": 1e-8})  # fmt: skip
    result = run("grpo", cfg, **QUIET)
    assert result.stopped_early and result.steps < 20  # a tiny learning rate: the held-out reward cannot improve
    assert "eval/reward/mean" in result.eval_metrics and "eval/completion/length" in result.eval_metrics
