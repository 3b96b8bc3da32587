"""alignkit eval winrate judged by a verifier: math answers checked against the records' gold answers."""

from __future__ import annotations

import json

from helpers import write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.errors import UserError
from alignkit.eval.judged import judge_by_verifier, match_responses

# (prompt, gold, A's response, B's response): A right where B is wrong twice, both right once, both wrong once,
# B right where A is wrong once, and one record without a gold answer (left out).
CASES = [
    ("What is 2 + 3?", "5", "2 + 3 = 5. Answer: 5", "Answer: 6"),
    ("What is 4 * 4?", "16", "The answer is 16.", "It is 12."),
    ("What is 9 - 2?", "7", "Answer: 7", "7"),
    ("What is 10 / 2?", "5", "Answer: 4", "Answer: 3"),
    ("What is 1 + 1?", "2", "Answer: 3", "1 + 1 = 2, so the answer is 2."),
    ("Write a haiku.", None, "Leaves fall", "Snow melts"),
]


def files(tmp_path, with_category=True):
    a, b = [], []
    for prompt, gold, ra, rb in CASES:
        rec = {"prompt": prompt, "answer": gold} if gold is not None else {"prompt": prompt}
        if with_category:
            rec["category"] = "add" if "+" in prompt else "other"
        a.append({**rec, "response": ra})
        b.append({"prompt": prompt, "response": rb})  # B's file carries no answers: A's record gives them
    return write_jsonl(tmp_path / "a.jsonl", a), write_jsonl(tmp_path / "b.jsonl", b)


def read(path):
    from alignkit.data.readers import read_records

    return read_records(str(path))


def test_outcomes_follow_correctness_and_unscored_prompts_are_left_out(tmp_path):
    a, b = files(tmp_path)
    matched = match_responses(read(a), read(b))
    assert matched.columns["answer"] == ["5", "16", "7", "5", "2", None]
    result, rows, left_out = judge_by_verifier(matched, "math", workers=0)
    assert left_out == 1 and rows[-1]["outcome"] is None and rows[-1]["score_a"] is None
    assert [r["outcome"] for r in rows[:5]] == [1.0, 1.0, 0.5, 0.5, 0.0]
    assert (result.wins, result.ties, result.losses) == (2, 2, 1)
    assert abs(result.decisive_rate - 2 / 3) < 1e-9 and abs(result.rate - 0.6) < 1e-9
    assert set(result.per_category) == {"add", "other"} and result.per_category["add"].n == 2
    # swapping the sides mirrors every outcome (the answers now come from B's record)
    swapped, _, _ = judge_by_verifier(match_responses(read(b), read(a)), "math", workers=0)
    assert (swapped.wins, swapped.ties, swapped.losses) == (1, 2, 2)


def test_cli_with_a_verifier_in_worker_processes(tmp_path):
    a, b = files(tmp_path, with_category=False)
    out, report = tmp_path / "judged.jsonl", tmp_path / "winrate.json"
    result = CliRunner().invoke(app, ["eval", "winrate", "--a", str(a), "--b", str(b), "--verifier", "math",
                                      "--out", str(out), "--json", str(report)])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "1 of 6 prompts left out" in result.output and "2 wins, 2 ties, 1 losses" in result.output
    assert json.loads(report.read_text())["judge"] == "verifier:math"
    assert len(out.read_text().splitlines()) == 6


def test_a_model_against_itself_by_verifier_ties_on_the_shipped_arithmetic(tiny_model_dir):
    result = CliRunner().invoke(app, ["eval", "winrate", "--a-model", tiny_model_dir, "--b-model", tiny_model_dir,
                                      "--verifier", "math", "--limit", "4", "--max-new-tokens", "6",
                                      "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "on 4 prompts: 0 wins, 4 ties, 0 losses" in result.output  # greedy, same model: same answers


def test_bad_judges_are_refused_before_anything_runs(tmp_path, reward_model_dir):
    a, b = files(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "winrate", "--a", str(a), "--b", str(b)])
    assert isinstance(r.exception, UserError) and "neither given" in str(r.exception)
    r = runner.invoke(app, ["eval", "winrate", "--a", str(a), "--b", str(b), "--verifier", "math",
                            "--reward-model", reward_model_dir])  # fmt: skip
    assert isinstance(r.exception, UserError) and "both given" in str(r.exception)
    r = runner.invoke(app, ["eval", "winrate", "--a", str(a), "--b", str(b), "--verifier", "nope"])
    assert isinstance(r.exception, UserError) and "reward function 'nope'" in str(r.exception)
    no_gold = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "response": "1"}])
    r = runner.invoke(app, ["eval", "winrate", "--a", str(no_gold), "--b", str(no_gold), "--verifier", "math"])
    assert isinstance(r.exception, UserError) and "scored none of the 1 prompts" in str(r.exception)
