"""alignkit compare: SFT, DPO, KTO and PPO from one tiny base, judged by a held-out reward model."""

from __future__ import annotations

import json

import pytest
from conftest import pair_records
from helpers import write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.errors import ConfigError
from alignkit.recipes.compare import evidence, load_compare_config


def test_compare_trains_every_method_and_writes_the_table(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_records(12))
    judge_pairs = write_jsonl(tmp_path / "judge.jsonl", pair_records(20)[12:])
    tiny = {"model": {"dtype": "fp32", "device": "cpu"}, "data": {"max_length": 64},
            "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1}}  # fmt: skip
    ppo = {**tiny, "rollout": {"prompts_per_step": 4, "samples_per_prompt": 1, "max_new_tokens": 6},
           "method": {"reward_workers": 0}}  # fmt: skip
    config = tmp_path / "compare.yaml"
    config.write_text(json.dumps({
        "base": tiny_model_dir, "pairs": str(pairs), "judge_pairs": str(judge_pairs), "eval_prompts": str(pairs),
        "eval_prompt_limit": 3, "helpful_limit": 2, "safety_limit": 2, "max_new_tokens": 6,
        "sft": {**tiny, "lora": {"r": 4}}, "dpo": {**tiny, "lora": {"r": 4}}, "kto": tiny, "rm": tiny, "judge": tiny,
        "ppo": ppo, "output_dir": str(tmp_path / "cmp"),
    }))  # fmt: skip
    result = CliRunner().invoke(app, ["compare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert list(out["rows"]) == ["base", "sft", "dpo", "kto", "ppo"]
    for name, row in out["rows"].items():
        assert row["vs"] == ("base" if name == "sft" else "sft")
        assert 0 <= row["win_rate"] <= 1 and row["kl"] >= -1e-4 and row["refusal_harmful"] is not None
        assert row["win_rate_hh"] is not None and row["win_rate_helpful"] is not None
    assert out["rows"]["dpo"]["train_seconds"] > 0
    ppo = out["rows"]["ppo"]  # the health monitor's verdict on the PPO run is in its row; the offline rows have none
    assert ppo["logged_steps"] == 2 and 0 <= ppo["alarm_steps"] <= 2 and ppo["train_kl_max"] is not None
    assert sum(ppo["alarms"].values()) >= ppo["alarm_steps"] and "alarm_steps" not in out["rows"]["dpo"]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| dpo |" in table and "| ppo |" in table and "vs sft" in table and " of 2 steps" in table
    # the judge and PPO's proxy are checked on the clear-cut held-out demo pairs, and the table says how they did
    assert set(out["sanity"]) == {"judge", "proxy"} and out["sanity"]["judge"]["pairs"] == 72
    assert f"judge {out['sanity']['judge']['accuracy']:.3f} (helpfulness " in table
    for name in out["rows"]:  # each row says whether its win rate is evidence
        assert table.split(f"| {name} |")[1].splitlines()[0].rstrip().endswith(f"| {evidence(name, out)} |")
    # a rerun reuses every trained stage
    again = CliRunner().invoke(app, ["compare", "--config", str(config), "--set", "methods=[dpo]"])
    assert again.exit_code == 0, again.output
    assert "sft: reusing" in again.output and "judge: reusing" in again.output and ": training " not in again.output
    # a changed stage is redone, and only it (its upstream is unchanged); the stage key is saved with it
    changed = CliRunner().invoke(
        app, ["compare", "--config", str(config), "--set", "methods=[dpo]", "--set", "dpo.method.beta=0.3"]
    )
    assert changed.exit_code == 0, changed.output
    assert "dpo: its config or its starting model changed" in changed.output and "dpo: training dpo" in changed.output
    assert "sft: reusing" in changed.output and "sft: training" not in changed.output
    assert json.loads((tmp_path / "cmp" / "dpo" / "stage.json").read_text())["sections"]["method"]["beta"] == 0.3
    # a retrained proxy reward model retrains PPO, which optimizes it (same path, other model)
    proxy = CliRunner().invoke(app, ["compare", "--config", str(config), "--set", "methods=[ppo]", "--set",
                                     "rm.method.center_weight=0.05", "--set", "sanity_pairs=''"])  # fmt: skip
    assert proxy.exit_code == 0, proxy.output
    assert "rm: training rm" in proxy.output and "ppo: training ppo" in proxy.output and "sft: reusing" in proxy.output
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["sanity"] == {}


def test_rows_judged_by_a_judge_under_the_bar_are_not_evidence():
    sane = lambda a: {"accuracy": a, "pairs": 72, "per_category": {}}  # noqa: E731
    result = {"sanity": {"judge": sane(0.9), "proxy": sane(0.46)}}
    assert evidence("dpo", result) == "yes" and evidence("ppo", result) == "NO: proxy 0.46 < 0.80"
    result["sanity"]["judge"] = sane(0.57)
    assert evidence("kto", result) == "NO: judge 0.57 < 0.80" and "judge 0.57, proxy 0.46" in evidence("ppo", result)
    assert evidence("dpo", {"sanity": {}}) == "unchecked"


def test_compare_config_errors():
    base = ["pairs=a.jsonl", "judge_pairs=b.jsonl", "eval_prompts=c.jsonl"]
    with pytest.raises(ConfigError, match="judge_pairs"):
        load_compare_config(None, ["pairs=a.jsonl", "judge_pairs=a.jsonl", "eval_prompts=c.jsonl"])
    with pytest.raises(ConfigError, match="methods"):
        load_compare_config(None, [*base, "methods=[sft, orpo2]"])
    with pytest.raises(ConfigError, match="eval_prompts"):
        load_compare_config(None, base[:2])
