"""Online and iterative DPO in the shared loop on tiny models: learning from judged samples, iterations and replay,
exact resume mid-iteration, judges given as method.judge, and bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import Crash, crash_at, online_config, write_jsonl
from safetensors.torch import load_file

from alignkit.data.jsonl import read_jsonl
from alignkit.errors import ConfigError
from alignkit.train import run

QUIET = {"log": lambda *a, **k: None}


def prompts_file(tmp_path: Path, n: int = 16) -> str:
    words = "hi hello how is the weather today tell me a joke".split()
    return str(write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": " ".join(words[i % 5 : i % 5 + 4])}
                                                         for i in range(n)]))  # fmt: skip


def config(model_dir: str, data_file: str, out: Path, **sections):
    rollout = {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12}
    method = {"rewards": ["reward_fns:yes_share"], "reward_workers": 0, "replay_ratio": 0.0}
    return online_config("online-dpo", model_dir, data_file, out, {"rollout": rollout, "method": method}, **sections)


def trained(history: list, key: str) -> list:
    return [r[key] for r in history if key in r and "loss" in r]


def test_online_dpo_learns_from_best_and_worst_samples(word_model_dir, tmp_path):
    cfg = config(word_model_dir, prompts_file(tmp_path), tmp_path / "run", train={"max_steps": 12},
                 method={"beta": 0.1})  # fmt: skip
    result = run("online-dpo", cfg, **QUIET)
    rewards = trained(result.history, "reward/mean")
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, [round(r, 3) for r in rewards]
    first = result.history[0]
    for key in ("pairs/made", "pairs/ties", "pairs/unjudged", "pairs/trained", "rewards/margins",
                "rewards/accuracies", "kl/sequence", "completion/length", "time/judge", "time/reference"):  # fmt: skip
        assert key in first, key
    assert first["pairs/made"] + first["pairs/ties"] + first["pairs/unjudged"] == 4  # one verdict per prompt
    assert first["kl/sequence"] == pytest.approx(0.0, abs=1e-4)  # step 1 samples the initial policy itself


def test_iterations_sample_once_and_replay_mixes_old_pairs(word_model_dir, tmp_path):
    cfg = config(word_model_dir, prompts_file(tmp_path), tmp_path / "it", train={"max_steps": 6},
                 method={"iteration_steps": 3, "replay_ratio": 0.5})  # fmt: skip
    result = run("online-dpo", cfg, **QUIET)
    rows = [r for r in result.history if "loss" in r or "pairs/trained" in r]
    sampled = [r["step"] for r in rows if "pairs/made" in r]
    assert sampled == [1, 4]  # the policy samples at the start of each iteration only
    assert "replay/margins" not in rows[0] and "replay/margins" in rows[3]  # nothing to replay in iteration 1
    second = [r for r in rows if r["step"] == 4][0]
    assert second["pairs/trained"] == pytest.approx(2 * second["pairs/made"] / 3, abs=1)  # a third of the made, x2


def test_resume_mid_iteration_trains_on_the_same_pairs(word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    common = {"train": {"max_steps": 5, "save_steps": 2}, "method": {"iteration_steps": 3, "replay_ratio": 0.5}}
    whole = run("online-dpo", config(word_model_dir, data, tmp_path / "whole", **common), **QUIET)
    with pytest.raises(Crash):
        run("online-dpo", config(word_model_dir, data, tmp_path / "split", **common), callbacks=[crash_at(3)],
            **QUIET)  # fmt: skip
    resumed = run("online-dpo", config(word_model_dir, data, tmp_path / "split", **common), resume=True, **QUIET)
    a = load_file(str(whole.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    rows_a, rows_b = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "split" / "metrics.jsonl")
    for ra, rb in zip(rows_a, rows_b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


def test_replay_data_seeds_the_pool(word_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "hi how", "chosen": "yes yes", "rejected": "no"}] * 6)
    cfg = config(word_model_dir, prompts_file(tmp_path), tmp_path / "r", train={"max_steps": 1},
                 method={"replay_data": str(pairs), "replay_ratio": 0.5})  # fmt: skip
    row = run("online-dpo", cfg, **QUIET).history[0]
    assert row["pairs/trained"] == 2 * row["pairs/made"] and "replay/margins" in row  # fresh + as many replayed


def test_a_pointwise_judge_given_as_method_judge(word_model_dir, tmp_path):
    cfg = config(word_model_dir, prompts_file(tmp_path), tmp_path / "j", train={"max_steps": 2},
                 method={"rewards": [], "judge": "verifier:reward_fns:yes_share"})  # fmt: skip
    row = run("online-dpo", cfg, **QUIET).history[0]
    assert row["pairs/made"] >= 1 and "reward/mean" not in row  # no rewards: the judge made the pairs


def test_bad_online_dpo_configs(word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    with pytest.raises(ConfigError, match="no judge"):
        config(word_model_dir, data, tmp_path / "x", method={"rewards": []})
    with pytest.raises(ConfigError, match="rollout.samples_per_prompt"):
        config(word_model_dir, data, tmp_path / "x", rollout={"samples_per_prompt": 1})
    with pytest.raises(ConfigError, match="method.judge: 'nope' is not a judge"):
        config(word_model_dir, data, tmp_path / "x", method={"judge": "nope"})
    with pytest.raises(ConfigError, match="method.replay_ratio"):
        config(word_model_dir, data, tmp_path / "x", method={"replay_ratio": 1.0})
    with pytest.raises(ConfigError, match="method.iteration_steps"):
        config(word_model_dir, data, tmp_path / "x", method={"iteration_steps": 0})


def kto_config(model_dir: str, data_file: str, out: Path, **sections):
    rollout = {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 12}
    method = {"rewards": ["reward_fns:yes_share"], "reward_workers": 0, "replay_ratio": 0.0, "label_by": "group_mean"}
    return online_config("online-kto", model_dir, data_file, out, {"rollout": rollout, "method": method}, **sections)


def test_online_kto_learns_from_good_and_bad_samples(word_model_dir, tmp_path):
    cfg = kto_config(word_model_dir, prompts_file(tmp_path), tmp_path / "kto", train={"max_steps": 12})
    result = run("online-kto", cfg, **QUIET)
    rewards = trained(result.history, "reward/mean")
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, [round(r, 3) for r in rewards]
    first = result.history[0]
    assert first["labels/desirable"] + first["labels/undesirable"] + first["labels/unjudged"] == 16  # every sample
    assert first["labels/desirable"] >= 1 and first["labels/undesirable"] >= 1 and "kl" in first


def test_online_kto_threshold_labels_and_replayed_feedback(word_model_dir, tmp_path):
    feedback = write_jsonl(
        tmp_path / "fb.jsonl",
        [
            {"prompt": "hi how", "completion": "yes yes", "label": True},
            {"prompt": "hello is", "completion": "no", "label": False},
        ]
        * 4,
    )
    cfg = kto_config(word_model_dir, prompts_file(tmp_path), tmp_path / "t", train={"max_steps": 2},
                     rollout={"samples_per_prompt": 1},
                     method={"label_by": "threshold", "threshold": 0.0, "replay_data": str(feedback),
                             "replay_ratio": 0.5})  # fmt: skip
    row = run("online-kto", cfg, **QUIET).history[0]
    labelled = row["labels/desirable"] + row["labels/undesirable"]
    assert labelled + row["labels/unjudged"] == 4 and row["pairs/trained"] == 2 * labelled
    assert "replay/accuracies" in row
    with pytest.raises(ConfigError, match="rollout.samples_per_prompt"):
        kto_config(word_model_dir, prompts_file(tmp_path), tmp_path / "x", rollout={"samples_per_prompt": 1})


def test_an_llm_judge_in_both_orders_makes_the_pairs(tiny_model_dir, tmp_path):
    """The order-sensitive path end to end: the tiny model judges its own samples (logprobs of A/B), asked both ways;
    orders that disagree make no pair and are counted."""
    cfg = config(tiny_model_dir, prompts_file(tmp_path), tmp_path / "llm", train={"max_steps": 2},
                 rollout={"samples_per_prompt": 2, "max_new_tokens": 6},
                 method={"rewards": [], "judge": {"kind": "llm", "model": tiny_model_dir,
                                                  "batch_size": 4}})  # fmt: skip
    rows = run("online-dpo", cfg, **QUIET).history
    first = rows[0]
    assert first["pairs/made"] + first["pairs/ties"] + first["pairs/unjudged"] + first["judge/inconsistent"] == 4
    assert 0.0 <= first["judge/self_consistency"] <= 1.0
    with pytest.raises(ConfigError, match="an LLM judge compares two responses"):
        config(tiny_model_dir, prompts_file(tmp_path), tmp_path / "x", method={"judge": f"llm:{tiny_model_dir}"})
