"""The math verifier: answer extraction, equivalence (numbers and LaTeX via math-verify), the GSM8K gold format,
the math rewards' None semantics, and ``alignkit verify math`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import write_jsonl

from alignkit.rewards.verifiers.math import (
    answers_match,
    extract_answer,
    extract_gold,
    last_boxed,
    math_format_reward,
    math_reward,
)

GSM8K = Path("/work/shared/data/gsm8k/test-part1.jsonl")


@pytest.mark.parametrize(
    "text, answer",
    [
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
        ("#### 18\nThe answer is 20", "18"),  # GSM8K marker first
        ("#### $1,234.", "1234"),
        ("so x = \\boxed{\\frac{1}{\\sqrt{2}}} in the end", "\\frac{1}{\\sqrt{2}}"),
        ("first \\boxed{3}, then \\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),  # last box, nested braces
        ("\\fbox{7} and an unclosed \\boxed{8", "7"),
        ("The answer is 42.", "42"),
        ("Therefore, the final answer is $1,234.", "1234"),
        ("**Answer:** -3", "-3"),
        ("Answer: 50%", "50%"),
        ("The answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("The answer is 12 apples, not 13", "12"),
        ("It costs $5 and then 2.50 more.", "2.50"),
        ("About 3/4 of them", "3/4"),
        ("10 - 3 = 7, then it drops to -3", "-3"),
        ("We get 1,000,000.", "1000000"),
        ("no numbers here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_last_boxed_is_bounded_on_unclosed_boxes():
    assert last_boxed("\\boxed{" * 10_000) is None
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("18.0", "18", True),
        ("1,000", "1000", True),
        ("$18", "18", True),
        ("\\$18", "18", True),
        ("50%", "50", True),  # % is a unit: dropped
        ("50%", "0.5", False),
        ("3/4", "0.75", True),
        ("\\frac{3}{4}", "3/4", True),
        ("-0", "0", True),
        ("1.0000001", "1", True),  # relative tolerance 1e-6
        ("1.0001", "1", False),
        ("18 \\text{ eggs}", "18", True),
        ("17", "18", False),
        ("\\frac{1}{2}", "0.5", True),  # math-verify from here on
        ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\{1, 2\\}", "\\{2, 1\\}", True),
        ("(0, 1]", "(0, 1]", True),
        ("(0, 1)", "[0, 1]", False),
        ("x + 1", "1 + x", True),
        ("\\pi", "3", False),
        ("", "1", False),
        (None, "1", False),
        ("1", None, False),
        ("\\frac{", "}", False),
    ],
)
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_math_verify_outside_the_main_thread():
    """math-verify's timeout uses signals (main thread only); elsewhere it runs without one and still answers."""
    out = []
    thread = threading.Thread(target=lambda: out.append(answers_match("\\frac{1}{2}", "0.5")))
    thread.start()
    thread.join(60)
    assert out == [True]


def test_gsm8k_gold_format():
    if not GSM8K.is_file():
        print(f"skipped: {GSM8K} is absent")
        pytest.skip(f"{GSM8K} is absent")
    with open(GSM8K, encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(3)]
    for record in records:
        assert set(record) >= {"question", "answer"}
        final = record["answer"].rsplit("####", 1)[1].strip()
        assert extract_gold(record["answer"]) == final.replace(",", "")
        assert math_reward([record["question"]], [f"So the answer is {final}."], answer=[record["answer"]]) == [1.0]
        assert math_reward([record["question"]], ["The answer is 123456789."], answer=[record["answer"]]) == [0.0]


def test_gold_forms():
    assert extract_gold("\\frac{1}{2}") == "\\frac{1}{2}"  # unmarked gold is taken whole, not its last number
    assert extract_gold(18) == "18" and extract_gold(2.5) == "2.5"
    assert extract_gold("$1,000") == "1000"
    assert extract_gold("") is None and extract_gold(None) is None and extract_gold(True) is None


def test_math_reward_none_semantics():
    completions = ["#### 18", "the answer is 5", "\\boxed{\\frac{1}{2}}", "I don't know", "#### 3"]
    gold = ["Work...\n#### 18", "6", "0.5", "7", None]
    assert math_reward([""] * 5, completions, answer=gold, tests=[None] * 5) == [1.0, 0.0, 1.0, 0.0, None]
    assert math_reward([""] * 2, ["1", "2"]) == [None, None]  # no answer column at all
    conversation = [{"role": "assistant", "content": "It is \\boxed{4}."}]
    assert math_reward([""], [conversation], answer=["4"]) == [1.0]


def test_math_format_reward():
    completions = ["#### 3", "so \\boxed{x}", "The answer is 4.", "Answer: 5", "I think 6", "", None]
    assert math_format_reward([""] * 7, completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------- CLI


def verify_math(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignkit", "verify", "math", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_end_to_end(tmp_path):
    records = [
        {"id": 1, "completion": "2 + 2 = 4\n#### 4", "answer": "It is 4.\n#### 4"},
        {"id": 2, "completion": "The answer is \\boxed{\\frac{1}{2}}", "answer": "0.5"},
        {"id": 3, "completion": "I think it is 7", "answer": "8"},
        {"id": 4, "completion": "nothing to see", "answer": "8"},
        {"id": 5, "completion": "#### 9", "question": "no gold here"},
    ]
    src, out = write_jsonl(tmp_path / "in.jsonl", records), tmp_path / "out.jsonl"
    proc = verify_math("--input", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "records 5, correct 2, accuracy 0.5000, no gold answer 1" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5] and rows[0]["completion"] == records[0]["completion"]
    assert [r["reward"] for r in rows] == [1.0, 1.0, 0.0, 0.0, None]
    assert [r["extracted"] for r in rows] == ["4", "\\frac{1}{2}", "7", None, "9"]
    assert [r["gold"] for r in rows] == ["4", "0.5", "8", "8", None]


def test_cli_bad_input(tmp_path):
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"completion": "#### 1", "answer": "1"}, {"answer": "2"}, {"completion": 3}]
    )
    proc = verify_math("--input", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{src}:2: field 'completion' is missing" in proc.stderr
    assert f"{src}:3: field 'completion' is not text (got int)" in proc.stderr and "Fix:" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()

    proc = verify_math("--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr

    proc = verify_math("--input", str(src), "--out", str(src))
    assert proc.returncode == 2 and "is an input of this command" in proc.stderr
