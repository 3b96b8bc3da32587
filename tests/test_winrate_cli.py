"""alignkit eval winrate: files of responses judged by a real (tiny, trained) reward model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.errors import UserError
from alignkit.eval.judged import judge_by_reward, match_responses

PROMPTS = [f"Question {i}: say something about topic {i}." for i in range(12)]


def responses(tmp_path, name, texts, categories=None):
    records = [{"prompt": p, "response": t} for p, t in zip(PROMPTS, texts)]
    for r, c in zip(records, categories or []):
        r["category"] = c
    return write_jsonl(tmp_path / name, records)


def read(path):
    from alignkit.data.readers import read_records

    return read_records(str(path))


def test_outcomes_follow_the_reward_models_scores_and_mirror_when_swapped(reward_model_dir, tmp_path):
    from alignkit.reward_model import RewardModel

    a_texts = [f"A careful answer number {i}, with details." for i in range(12)]
    b_texts = [f"b{i}" if i % 2 else f"Another long reply {i} here." for i in range(12)]
    a, b = responses(tmp_path, "a.jsonl", a_texts, ["x", "y"] * 6), responses(tmp_path, "b.jsonl", b_texts)
    rm = RewardModel.load(reward_model_dir, device="cpu")
    result, rows = judge_by_reward(match_responses(read(a), read(b)), rm)
    direct_a = rm.reward(PROMPTS, a_texts)[0].tolist()
    direct_b = rm.reward(PROMPTS, b_texts)[0].tolist()
    expected = [1.0 if x > y else 0.0 if y > x else 0.5 for x, y in zip(direct_a, direct_b)]
    assert [r["outcome"] for r in rows] == expected
    assert result.wins == expected.count(1.0) and result.losses == expected.count(0.0)
    assert set(result.per_category) == {"x", "y"}
    swapped, _ = judge_by_reward(match_responses(read(b), read(a)), rm)
    assert (swapped.wins, swapped.losses, swapped.ties) == (result.losses, result.wins, result.ties)
    same, _ = judge_by_reward(match_responses(read(a), read(a)), rm)
    assert same.ties == 12 and same.rate == 0.5
    huge_margin, _ = judge_by_reward(match_responses(read(a), read(b)), rm, margin=1e9)
    assert huge_margin.ties == 12


def test_cli_prints_the_statistics_and_writes_judged_records(reward_model_dir, tmp_path):
    a = responses(tmp_path, "a.jsonl", [f"Answer {i} with some words." for i in range(12)])
    b = responses(tmp_path, "b.jsonl", [f"no {i}" for i in range(12)])
    out = tmp_path / "judged.jsonl"
    proc = subprocess.run([sys.executable, "-m", "alignkit", "eval", "winrate", "--a", str(a), "--b", str(b),
                           "--reward-model", reward_model_dir, "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "a.jsonl vs b.jsonl on 12 prompts" in proc.stdout and "95% Wilson interval" in proc.stdout
    assert "bootstrap interval over prompts" in proc.stdout and "length-controlled win rate" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) >= {"prompt", "reward_a", "reward_b", "outcome", "length_diff"}


def test_bad_input_names_the_file_line_and_field(reward_model_dir, tmp_path):
    a = responses(tmp_path, "a.jsonl", ["x"] * 12)
    short_b = write_jsonl(tmp_path / "short.jsonl", [{"prompt": PROMPTS[0], "response": "y"}])
    no_response = write_jsonl(tmp_path / "nr.jsonl", [{"prompt": p} for p in PROMPTS])
    repeated = write_jsonl(tmp_path / "rep.jsonl", [{"prompt": PROMPTS[0], "response": "y"}] * 2)
    base = ["eval", "winrate", "--reward-model", reward_model_dir, "--device", "cpu"]
    cases = [
        (["--a", str(a), "--b", str(short_b)], f'{a}:2: prompt "Question 1'),
        (["--a", str(a), "--b", str(no_response)], f"{no_response}:1: field 'response' is missing"),
        (["--a", str(a), "--b", str(repeated)], f"{repeated}:2: prompt repeats {repeated}:1"),
        (["--a", str(a), "--b", str(a), "--margin", "-1"], "margin is -1"),
        (["--a", str(a), "--b", str(a), "--aggregate", "median"], "--aggregate median: unknown"),
        (["--a", str(a), "--b", str(a), "--out", str(a)], "is an input of this command"),
    ]
    runner = CliRunner()
    for args, message in cases:
        result = runner.invoke(app, base + args)
        assert isinstance(result.exception, UserError) and message in str(result.exception), (args, result.output)
    missing_rm = runner.invoke(app, ["eval", "winrate", "--a", str(a), "--b", str(a), "--reward-model",
                                     str(tmp_path / "nope")])  # fmt: skip
    assert isinstance(missing_rm.exception, UserError) and "does not exist" in str(missing_rm.exception)


def test_generate_output_is_accepted_as_responses(reward_model_dir, tmp_path):
    """`alignkit generate --out` writes {"prompt", "completions": [{"text", ...}]}: one completion is a response."""
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": p, "completions": [{"text": "ok", "finish_reason": "eos"}]}
                                              for p in PROMPTS])  # fmt: skip
    plain = responses(tmp_path, "plain.jsonl", ["ok"] * 12)
    matched = match_responses(read(gen), read(plain))
    assert matched.a == ["ok"] * 12
    two = write_jsonl(tmp_path / "two.jsonl", [{"prompt": PROMPTS[0], "completions": [{"text": "a"}, {"text": "b"}]}])
    with pytest.raises(UserError, match="two.jsonl:1: field 'completions' holds 2 responses"):
        match_responses(read(two), read(plain))
