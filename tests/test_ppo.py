"""PPO in the shared loop on tiny models: learning with a separate or shared value function, the adaptive KL
controller, the health monitor's metrics, exact resume (controller state included), a reward model as the reward
and as the value model's start, and bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import Crash, crash_at, online_config, write_jsonl
from safetensors.torch import load_file

from alignkit.errors import ConfigError
from alignkit.train import make_config, run

QUIET = {"log": lambda *a, **k: None}


def prompts_file(tmp_path: Path, n: int = 16) -> str:
    words = "hi hello how is the weather today tell me a joke".split()
    return str(
        write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": " ".join(words[i % 5 : i % 5 + 4])} for i in range(n)])
    )


def ppo_config(model_dir: str, data_file: str, out: Path, **sections):
    rollout = {"prompts_per_step": 8, "samples_per_prompt": 2, "max_new_tokens": 12}
    method = {"rewards": ["reward_fns:yes_share"], "reward_workers": 0, "iterations": 2, "minibatches": 2}
    return online_config("ppo", model_dir, data_file, out, {"rollout": rollout, "method": method}, **sections)


@pytest.mark.parametrize("value", ["separate", "shared"])
def test_ppo_learns_and_reports_its_health(value, word_model_dir, tmp_path):
    cfg = ppo_config(word_model_dir, prompts_file(tmp_path), tmp_path / value, train={"max_steps": 10},
                     method={"value": value})  # fmt: skip
    result = run("ppo", cfg, **QUIET)
    rows = result.history
    first, last = sum(r["reward/mean"] for r in rows[:3]) / 3, sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert last > first + 0.05, [round(r["reward/mean"], 3) for r in rows]
    assert rows[0]["kl/sequence"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the reference's own
    assert rows[-1]["kl/sequence"] > 0
    for key in ("loss/policy", "loss/value", "value/explained_variance", "value/clip_fraction", "clip/low", "entropy",
                "kl/coef", "health/alarms", "health/kl_high", "health/entropy_collapse", "time/generate"):  # fmt: skip
        assert key in rows[0], key
    saved = result.output_dir / "value"
    assert (saved / "value_head.safetensors").is_file() if value == "shared" else (saved / "config.json").is_file()


def test_adaptive_kl_controller_raises_beta_when_kl_is_over_target(word_model_dir, tmp_path):
    cfg = ppo_config(word_model_dir, prompts_file(tmp_path), tmp_path / "kl", train={"max_steps": 6},
                     method={"beta": 0.1, "kl_target": 0.05, "kl_horizon": 16})  # fmt: skip
    rows = run("ppo", cfg, **QUIET).history
    over = [r for r in rows if r["kl/sequence"] > 0.05]
    assert over, "the policy never left the reference"
    assert rows[-1]["kl/coef_next"] > 0.1  # KL above target: beta went up (by at most 20% x 16/16 per step)
    assert rows[0]["kl/coef"] == pytest.approx(0.1) and rows[-1]["kl/coef"] > rows[0]["kl/coef"]
    fixed = ppo_config(
        word_model_dir, prompts_file(tmp_path), tmp_path / "fixed", method={"beta": 0.1, "kl_target": None}
    )
    assert all(r["kl/coef"] == pytest.approx(0.1) for r in run("ppo", fixed, **QUIET).history)


def test_resume_keeps_the_kl_controller(word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    common = {"train": {"max_steps": 4, "save_steps": 2}, "method": {"kl_target": 0.05, "kl_horizon": 16}}
    whole = run("ppo", ppo_config(word_model_dir, data, tmp_path / "whole", **common), **QUIET)
    with pytest.raises(Crash):
        run("ppo", ppo_config(word_model_dir, data, tmp_path / "split", **common), callbacks=[crash_at(3)], **QUIET)
    resumed = run("ppo", ppo_config(word_model_dir, data, tmp_path / "split", **common), resume=True, **QUIET)
    a, b = (
        load_file(str(whole.model_dir / "model.safetensors")),
        load_file(str(resumed.model_dir / "model.safetensors")),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    from alignkit.data.jsonl import read_jsonl

    rows_a, rows_b = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["kl/coef"] for r in rows_a] == pytest.approx([r["kl/coef"] for r in rows_b], rel=1e-12)
    assert rows_a[-1]["kl/coef"] != rows_a[0]["kl/coef"]  # the controller moved: its state was checkpointed
    va = load_file(str(tmp_path / "whole" / "value" / "model.safetensors"))
    vb = load_file(str(tmp_path / "split" / "value" / "model.safetensors"))
    for k in va:  # the value model is part of the checkpoint too
        torch.testing.assert_close(va[k], vb[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.0}])
def test_reward_model_as_reward_and_as_the_value_models_start(lora, tiny_model_dir, pairs_file, tmp_path):
    from alignkit.models import load_tokenizer
    from alignkit.reward_model.model import head_of
    from alignkit.train.online.ppo import load_value_model

    rm_sections = {
        "model": {"name": tiny_model_dir, "dtype": "fp32", "device": "cpu"},
        "data": {"train": pairs_file, "max_length": 64},
        "train": {"output_dir": str(tmp_path / "rm"), "max_steps": 2, "batch_size": 4, "learning_rate": 1e-3},
    }
    if lora:
        rm_sections["lora"] = lora
    rm = run("rm", make_config("rm", **rm_sections), **QUIET)
    tokenizer = load_tokenizer(tiny_model_dir)
    value = load_value_model(str(rm.model_dir), tiny_model_dir, None, tokenizer)
    from alignkit.reward_model import RewardModel

    scorer = RewardModel.load(rm.model_dir, device="cpu").members[0].scorer
    ids = torch.tensor([tokenizer("hello there").input_ids])
    expected = scorer(ids, torch.ones_like(ids))[0, 0]
    hidden = value.model(input_ids=ids).last_hidden_state[0, -1]
    torch.testing.assert_close(head_of(value)(hidden)[0], expected, atol=1e-5, rtol=1e-5)  # starts as the RM
    data = str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i} plus {i}?"} for i in range(8)]))
    cfg = ppo_config(tiny_model_dir, data, tmp_path / "ppo", data={"max_length": 64}, train={"max_steps": 2},
                     rollout={"prompts_per_step": 4},
                     method={"rewards": [], "reward_model": str(rm.model_dir)})  # fmt: skip
    rows = run("ppo", cfg, **QUIET).history
    assert "rewards/reward_model/mean" in rows[0] and rows[0]["rewards/masked"] == 0


def test_bad_ppo_configs(word_model_dir, tmp_path):
    data = prompts_file(tmp_path)
    with pytest.raises(ConfigError, match="method.kl_target"):
        ppo_config(word_model_dir, data, tmp_path / "x", method={"kl_target": -1})
    with pytest.raises(ConfigError, match="method.lam"):
        ppo_config(word_model_dir, data, tmp_path / "x", method={"lam": 2})
    with pytest.raises(ConfigError, match="value_model is set but method.value is shared"):
        ppo_config(word_model_dir, data, tmp_path / "x", method={"value": "shared", "value_model": word_model_dir})
