"""Early stopping on a gold metric (``train/early_stop.py``) and ``train.keep_best``: the rule on constructed
sequences, a real tiny run where the gold metric peaks while the proxy keeps rising (stops, keeps the best weights,
resumes exactly), the held-out gold reward model of the online methods, and bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_sections
from helpers import online_config, write_jsonl
from safetensors.torch import load_file

from alignkit.data.jsonl import read_jsonl
from alignkit.errors import ConfigError, UserError
from alignkit.train import make_config, run
from alignkit.train.early_stop import EarlyStopping, higher_is_better
from alignkit.train.methods.preference import PreferenceMethod

QUIET = {"log": lambda *a, **k: None}


def feed(rule: EarlyStopping, values) -> list:
    """Evaluations at steps 1, 2, ... until the rule says stop; returns the decisions."""
    decisions = []
    for step, value in enumerate(values, start=1):
        decisions.append(rule.update(step, value))
        if decisions[-1].stop:
            break
    return decisions


# ---------------------------------------------------------------------------------------------- the rule


def test_rises_then_falls_stops_after_patience_with_the_best_at_the_peak():
    rule = EarlyStopping("eval/gold", patience=2)
    decisions = feed(rule, [0.1, 0.3, 0.6, 0.5, 0.55, 0.9])
    assert [d.improved for d in decisions] == [True, True, True, False, False]
    assert decisions[-1].stop and decisions[-1].step == 5  # two evaluations after the peak; 0.9 is never seen
    assert (decisions[-1].best_step, decisions[-1].best_value) == (3, 0.6)
    assert "early stopping at step 5: eval/gold has not improved for 2 evaluation(s) (best 0.6 at step 3)" == (
        rule.message(5)
    )


def test_a_new_best_resets_the_count():
    decisions = feed(EarlyStopping("eval/gold", patience=2), [0.1, 0.05, 0.2, 0.1, 0.3, 0.2, 0.1])
    assert [d.stop for d in decisions] == [False] * 6 + [True]
    assert decisions[-1].best_step == 5


def test_min_delta_an_improvement_must_be_larger_than_the_margin():
    decisions = feed(EarlyStopping("eval/gold", patience=2, min_delta=0.05), [0.5, 0.54, 0.56, 0.7])
    assert [d.improved for d in decisions] == [True, False, True, True]  # 0.54 is within 0.05 of 0.5; 0.56 is not
    decisions = feed(EarlyStopping("eval/gold", patience=2, min_delta=0.05), [0.5, 0.52, 0.54, 0.9])
    assert decisions[-1].stop and decisions[-1].step == 3 and decisions[-1].best_step == 1  # a slow creep stops


def test_min_mode_and_the_direction_by_name():
    decisions = feed(EarlyStopping("eval/loss", patience=1), [1.0, 0.8, 0.9])  # auto: a loss is minimized
    assert decisions[-1].stop and decisions[-1].best_value == 0.8
    decisions = feed(EarlyStopping("eval/gold", patience=1, mode="min"), [1.0, 0.8, 0.9])
    assert decisions[-1].stop and (decisions[-1].best_step, decisions[-1].best_value) == (2, 0.8)
    decisions = feed(EarlyStopping("eval/loss", patience=1, mode="max"), [1.0, 0.8])  # an explicit mode wins
    assert decisions[-1].stop and decisions[-1].best_value == 1.0
    assert [higher_is_better(n) for n in ("eval/loss", "eval/nll/chosen", "eval/kl/sequence")] == [False] * 3
    assert [higher_is_better(n) for n in ("eval/gold/reward", "eval/rewards/accuracies")] == [True] * 2


def test_never_fires_on_a_monotone_rise_and_without_patience_only_tracks():
    decisions = feed(EarlyStopping("eval/gold", patience=1), [0.1 * i for i in range(1, 30)])
    assert all(d.improved and not d.stop for d in decisions) and decisions[-1].best_step == 29
    tracking = EarlyStopping("eval/gold", patience=None)
    decisions = feed(tracking, [0.5] + [0.1] * 20)
    assert not any(d.stop for d in decisions) and decisions[-1].best_step == 1


def test_nan_is_never_a_best():
    decisions = feed(EarlyStopping("eval/gold", patience=2), [float("nan"), 0.2, float("nan"), float("nan")])
    assert [d.improved for d in decisions] == [False, True, False, False]
    assert decisions[-1].stop and decisions[-1].best_value == 0.2


def test_state_round_trip_continues_exactly():
    values = [0.1, 0.4, 0.3, 0.35, 0.5, 0.45, 0.2, 0.1]
    whole = feed(EarlyStopping("eval/gold", patience=3), values)
    first = EarlyStopping("eval/gold", patience=3)
    head = feed(first, values[:4])
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint's state.json keeps it
    assert set(state) == {"best_metric", "best_step", "evals_without_improvement", "stopped_early"}
    second = EarlyStopping("eval/gold", patience=3)
    second.load_state_dict(state)
    tail = [second.update(step, v) for step, v in enumerate(values[4 : len(whole)], start=5)]
    assert head + tail == whole
    old = EarlyStopping("eval/gold", patience=3)
    old.load_state_dict({"best_metric": 0.4, "evals_without_improvement": 1, "stopped_early": False})  # no best_step
    assert old.best_step is None and not old.update(5, 0.3).improved


def test_bad_arguments_and_a_missing_metric():
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping("eval/gold", min_delta=-0.1)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("eval/gold", mode="best")
    with pytest.raises(UserError, match="'eval/gold' is not an eval metric. Fix: use one of eval/loss"):
        EarlyStopping("eval/gold", patience=1).value_of({"eval/loss": 1.0})


# ------------------------------------------------------------------------------- a constructed training run

GOLD = [0.2, 0.5, 0.7, 0.6, 0.65, 0.9, 1.0, 1.1]  # peaks at step 3; patience 2 stops at step 5
PROXY = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # keeps rising


@pytest.fixture
def scripted_eval(monkeypatch):
    """DPO's evaluate returns the next scripted (gold, proxy) pair; ``script["values"]`` is what is left."""
    script = {"values": list(zip(GOLD, PROXY))}

    def evaluate(self, module, items, batch_size, accelerator):
        gold, proxy = script["values"].pop(0)
        return {"gold": gold, "proxy": proxy, "loss": 0.5}

    monkeypatch.setattr(PreferenceMethod, "evaluate", evaluate)
    return script


def gold_run_sections(model_dir: str, data: str, out: Path, **train) -> dict:
    sections = tiny_sections(model_dir, data, out, max_steps=8, eval_steps=1, save_steps=1, keep_last=20,
                             early_stopping_patience=2, early_stopping_metric="eval/gold", **train)  # fmt: skip
    sections["data"]["eval_fraction"] = 0.2
    return sections


def policy_weights(path: Path) -> dict[str, torch.Tensor]:
    """A model dir's (model.safetensors) or a checkpoint's (trainable.safetensors, wrapper-prefixed) weights."""
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    return {k.removeprefix("model."): v for k, v in load_file(str(path / "trainable.safetensors")).items()}


def assert_same_weights(a: dict, b: dict) -> None:
    shared = a.keys() & b.keys()
    assert len(shared) >= 10, (list(a)[:3], list(b)[:3])
    for k in shared:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def assert_different_weights(a: dict, b: dict) -> None:
    assert max((a[k] - b[k]).abs().max().item() for k in a.keys() & b.keys()) > 1e-4


def test_gold_metric_stops_a_run_while_the_proxy_rises_and_best_holds_the_peak(
    scripted_eval, tiny_model_dir, pairs_file, tmp_path
):
    out = tmp_path / "gold"
    logs = []
    result = run("dpo", make_config("dpo", **gold_run_sections(tiny_model_dir, pairs_file, out)), log=logs.append)
    assert result.stopped_early and result.steps == 5
    assert (result.best_step, result.best_metric, result.best_dir) == (3, 0.7, out / "best")
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/gold" in r]
    assert [r["eval/gold"] for r in evals] == GOLD[:5] and [r["eval/proxy"] for r in evals] == PROXY[:5]
    assert json.loads((out / "best" / "best.json").read_text()) == {
        "step": 3,
        "metric": "eval/gold",
        "value": 0.7,
        "mode": "max",
    }
    assert {p.name for p in (out / "best").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    best, final = policy_weights(out / "best"), policy_weights(out / "model")
    assert_same_weights(best, policy_weights(out / "ckpt-0000003"))  # the weights of the best eval step
    assert_same_weights(final, policy_weights(out / "ckpt-0000005"))  # model/ is the last step
    assert_different_weights(best, final)
    assert_different_weights(best, policy_weights(out / "ckpt-0000004"))
    assert not list(out.glob(".best*"))  # written atomically: no temp dir left behind
    lines = [str(x) for x in logs]
    assert sum("new best eval/gold" in x for x in lines) == 3  # one line per new best (steps 1, 2, 3)
    assert any("early stopping at step 5: eval/gold has not improved for 2" in x for x in lines)
    assert any(f"best eval: step 3, eval/gold 0.7; its weights are in {out / 'best'}" in x for x in lines)


def test_the_rule_resumes_exactly_from_a_checkpoint(scripted_eval, tiny_model_dir, pairs_file, tmp_path):
    class Crash(Exception):
        pass

    def crash_at_4(state, metrics):
        if state.step == 4:  # after step 4's eval and checkpoint
            raise Crash()

    out = tmp_path / "resumed"
    sections = gold_run_sections(tiny_model_dir, pairs_file, out)
    with pytest.raises(Crash):
        run("dpo", make_config("dpo", **sections), callbacks=[crash_at_4], **QUIET)
    saved = json.loads((out / "ckpt-0000004" / "state.json").read_text())
    assert (saved["best_step"], saved["best_metric"], saved["evals_without_improvement"]) == (3, 0.7, 1)
    scripted_eval["values"] = list(zip(GOLD, PROXY))[4:]  # the resumed run evaluates from step 5 on
    result = run("dpo", make_config("dpo", **sections), resume=True, **QUIET)
    assert result.stopped_early and result.steps == 5 and result.best_step == 3
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 3
    assert_same_weights(policy_weights(out / "best"), policy_weights(out / "ckpt-0000003"))


def test_keep_best_off_writes_no_best_and_keep_best_on_tracks_without_stopping(
    scripted_eval, tiny_model_dir, pairs_file, tmp_path
):
    off = run("dpo", make_config("dpo", **gold_run_sections(tiny_model_dir, pairs_file, tmp_path / "off",
                                                            keep_best=False)), **QUIET)  # fmt: skip
    assert off.stopped_early and off.best_step == 3 and off.best_dir is None
    assert not (tmp_path / "off" / "best").exists()
    scripted_eval["values"] = list(zip(GOLD, PROXY))
    sections = gold_run_sections(tiny_model_dir, pairs_file, tmp_path / "on", keep_best=True)
    sections["train"]["early_stopping_patience"] = None
    on = run("dpo", make_config("dpo", **sections), **QUIET)
    assert not on.stopped_early and on.steps == 8 and on.best_step == 8  # GOLD's last value is its highest
    assert json.loads((tmp_path / "on" / "best" / "best.json").read_text())["value"] == 1.1
    assert_same_weights(policy_weights(tmp_path / "on" / "best"), policy_weights(tmp_path / "on" / "model"))
    # overwrite drops an earlier run's best/
    sections["train"].update(overwrite=True, keep_best=False, max_steps=1)
    scripted_eval["values"] = list(zip(GOLD, PROXY))
    run("dpo", make_config("dpo", **sections), **QUIET)
    assert not (tmp_path / "on" / "best").exists()


# ------------------------------------------------------------------ the gold reward model of online methods


@pytest.fixture
def gold_reward_model(reward_model_dir) -> str:
    return reward_model_dir  # the tiny reward model of conftest


def test_gold_reward_model_scores_eval_samples_of_a_grpo_run(gold_reward_model, word_model_dir, tmp_path):
    words = "hi hello how is the weather today tell me a joke".split()
    data = str(write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": " ".join(words[i % 5 : i % 5 + 4])}
                                                         for i in range(8)]))  # fmt: skip
    out = tmp_path / "grpo"
    cfg = online_config(
        "grpo", word_model_dir, data, out,
        {"rollout": {"prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "eval_samples": 2},
         "method": {"rewards": ["reward_fns:yes_share"], "reward_workers": 0}},
        data={"eval": data}, method={"gold_reward_model": gold_reward_model},
        train={"max_steps": 2, "eval_steps": 1, "keep_best": True, "early_stopping_metric": "eval/gold/reward"},
    )  # fmt: skip
    result = run("grpo", cfg, **QUIET)
    evals = [r for r in result.history if "eval/reward/mean" in r]
    assert len(evals) == 2 and all(math.isfinite(r["eval/gold/reward"]) for r in evals)
    assert "eval/gold/reward" in result.eval_metrics
    assert not any("gold/reward" in k for r in result.history if "loss" in r for k in r)  # eval only
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "eval/gold/reward" and best["step"] == result.best_step
    assert best["value"] == max(r["eval/gold/reward"] for r in evals)


def test_gold_reward_is_the_mean_normalized_score_of_the_eval_samples(gold_reward_model):
    """``evaluate`` adds the gold model's mean normalized score over every eval sample (ensemble members averaged)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from alignkit.reward_model import RewardModel
    from alignkit.train.online.rollout import OnlineMethod

    class FakeSampler:
        def sample(self, prompts, params, seeds):
            return [[SimpleNamespace(token_ids=[5, 6], logprobs=[0.0, 0.0], finish_reason="stop", text=f"ok {i} {j}")
                     for j in range(params.n)] for i in range(len(prompts))]  # fmt: skip

    gold = RewardModel.load(gold_reward_model, device="cpu")
    method = OnlineMethod.__new__(OnlineMethod)  # only what evaluate reads
    method.cfg = SimpleNamespace(train=SimpleNamespace(seed=0, eval_batch_size=4))
    method.ro = SimpleNamespace(eval_samples=2, max_new_tokens=4, eval_temperature=0.0, top_p=1.0, top_k=0,
                                min_p=0.0, stop=[])  # fmt: skip
    method.sampler, method.gold, method.episodes = FakeSampler(), gold, None
    method.score = lambda items, samples: ([1.0] * len(samples), {}, {})
    items = [SimpleNamespace(prompt=f"Question {i}?", prompt_ids=[1, 2], index=i) for i in range(3)]
    accelerator = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"), autocast=nullcontext)
    metrics = OnlineMethod.evaluate(method, None, items, 4, accelerator)
    prompts = [x.prompt for x in items for _ in range(2)]
    expected = gold.reward(prompts, [f"ok {i} {j}" for i in range(3) for j in range(2)])[0]
    assert metrics["gold/reward"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert metrics["reward/mean"] == 1.0


# ------------------------------------------------------------------------------------------------ bad configs


def test_keep_best_without_eval_data_is_a_clear_error(tiny_model_dir, pairs_file, tmp_path):
    sections = tiny_sections(tiny_model_dir, pairs_file, tmp_path / "x", keep_best=True)
    with pytest.raises(UserError, match="train.keep_best is set but there is no eval data. Fix:"):
        run("dpo", make_config("dpo", **sections), **QUIET)


def test_bad_mode_and_min_delta_name_the_field(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="train.early_stopping_mode.*auto, max, min"):
        make_config("dpo", **tiny_sections(tiny_model_dir, pairs_file, tmp_path, early_stopping_mode="best"))
    with pytest.raises(ConfigError, match="field 'train.early_stopping_min_delta' is -0.1. Fix:"):
        make_config("dpo", **tiny_sections(tiny_model_dir, pairs_file, tmp_path, early_stopping_min_delta=-0.1))


def test_a_reward_models_best_weights_load_as_a_reward_model(tiny_model_dir, tmp_path):
    from conftest import pair_records

    from alignkit.reward_model import RewardModel

    data = str(write_jsonl(tmp_path / "pairs.jsonl", pair_records(16)))
    sections = tiny_sections(tiny_model_dir, data, tmp_path / "rm", max_steps=2, eval_steps=1, keep_best=True)
    sections["data"]["eval"] = data
    result = run("rm", make_config("rm", **sections), log=lambda *a, **k: None)
    rm = RewardModel.load(result.best_dir, device="cpu")
    assert rm.reward(["What is 1 plus 2?"], ["It is 3."])[0].shape == (1,)
