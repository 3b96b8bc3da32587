"""Reward functions: loading specs, config parsing, weighted combination, None semantics, and the worker pool
(timeouts, crashes, contract violations, retries item by item, no worker left behind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import reward_fns

from alignkit.errors import ConfigError, UserError
from alignkit.rewards import RewardRunner, RewardSpec, load_reward_function, parse_reward_specs
from alignkit.rewards.functions import BUILTINS, ContractViolation, check_rewards
from alignkit.rewards.verifiers.math import math_format_reward, math_reward

psutil = pytest.importorskip("psutil")
TESTS = Path(__file__).resolve().parent


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


# --------------------------------------------------------------------------------------------- loading


def test_builtin_names():
    assert load_reward_function("math") is math_reward
    assert load_reward_function("math_format") is math_format_reward
    assert (
        BUILTINS["code"] == "alignkit.rewards.verifiers.code:code_reward"
    )  # mapped lazily: imported only when asked for


def test_module_and_file_specs(tmp_path):
    assert load_reward_function("reward_fns:length") is reward_fns.length
    assert load_reward_function(" alignkit.rewards.verifiers.math:math_reward ") is math_reward
    path = tmp_path / "my_rewards.py"
    path.write_text("def shout(prompts, completions, **_):\n    return [float(c.isupper()) for c in completions]\n")
    fn = load_reward_function(f"{path}:shout")
    assert fn([""] * 2, ["HI", "hi"]) == [1.0, 0.0]
    assert load_reward_function(f"{path}:shout") is fn  # the file is imported once


@pytest.mark.parametrize(
    "spec, says",
    [
        ("", "not a name"),
        ("maths", "not a built-in name and no ':'"),
        ("reward_fns", "no ':' before the function"),
        ("reward_fns:", "no ':' before the function"),
        ("no_such_module_xyz:fn", "no module named 'no_such_module_xyz'"),
        ("reward_fns:nope", "has no attribute 'nope'"),
        ("reward_fns:NOT_CALLABLE", "not a function"),
        ("missing/file.py:fn", "does not exist"),
    ],
)
def test_bad_specs(spec, says):
    with pytest.raises(UserError, match="Fix:") as e:
        load_reward_function(spec)
    assert says in str(e.value) and repr(spec.strip()) in str(e.value)


def test_bad_modules(tmp_path, monkeypatch):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(UserError, match="SyntaxError"):
        load_reward_function(f"{broken}:f")
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="Fix: install no_such_dependency_xyz"):
        load_reward_function("needs_dep:f")


def test_specs_from_config():
    assert parse_reward_specs("math") == [RewardSpec("math", 1.0, 30.0, "math")]
    specs = parse_reward_specs(["math", {"function": "reward_fns:length", "weight": 0.1, "timeout": 5, "name": "len"}])
    assert specs[1] == RewardSpec("reward_fns:length", 0.1, 5.0, "len")
    assert RewardSpec("dir/file.py:score").name == "score" and RewardSpec(reward_fns.length).name == "length"


@pytest.mark.parametrize(
    "value, says",
    [
        ([], "rewards: [] names no reward function"),
        (3, "rewards: 3 names no reward function"),
        ([7], "rewards[0]: 7 is not a reward function"),
        ([{"weight": 1}], "rewards[0].function"),
        ([{"function": "math", "weight": "high"}], "rewards[0].weight"),
        ([{"function": "math", "weight": True}], "rewards[0].weight"),
        ([{"function": "math", "timeout": 0}], "rewards[0].timeout"),
        (["math", {"function": "math", "timeout": -1}], "rewards[1].timeout"),
        ([{"function": "math", "name": "a/b"}], "rewards[0].name"),
        ([{"function": "math", "wieght": 2}], "rewards[0].wieght: unknown key"),
        (
            ["math", {"function": "reward_fns:length", "name": "math"}],
            "rewards[1].name: two reward functions are named",
        ),
    ],
)
def test_bad_config_values(value, says):
    with pytest.raises(ConfigError, match="Fix:") as e:
        parse_reward_specs(value)
    assert says in str(e.value)


def test_contract_check():
    assert check_rewards((1, 0.5, None, True), 4, "f") == [1.0, 0.5, None, 1.0]
    for values, says in [([1.0], "returned 1 values for 2"), ("12", "returned a str"), ([1.0, "x"], "'x' (str)"),
                         ([1.0, float("nan")], "nan"), (None, "NoneType")]:  # fmt: skip
        with pytest.raises(ContractViolation, match="reward function 'f'") as e:
            check_rewards(values, 2, "f")
        assert says in str(e.value)


# --------------------------------------------------------------------------------------------- combination (in process)


def test_weighted_sum_and_none_semantics():
    specs = [RewardSpec("reward_fns:answer_is", weight=2.0), RewardSpec("reward_fns:length", weight=0.5)]
    runner = RewardRunner(specs + [RewardSpec("reward_fns:always_none")], workers=0)
    res = runner(["p"] * 3, ["ab", "c", "xyz"], {"answer": ["ab", "d", None], "unused": [1, 2, 3]})
    assert res.per_function == {"answer_is": [1.0, 0.0, None], "length": [2.0, 1.0, 3.0], "always_none": [None] * 3}
    assert res.rewards == [2.0 * 1 + 0.5 * 2, 0.5 * 1, 0.5 * 3]  # None from one function: the others still count
    assert res.status["answer_is"] == ["scored", "scored", "none"]
    assert res.stats["always_none"].none == 3 and res.stats["answer_is"].scored == 2
    m = res.metrics()
    assert m["rewards/answer_is/mean"] == 0.5 and m["rewards/answer_is/std"] == 0.5 and m["rewards/answer_is/none"] == 1
    assert "rewards/always_none/mean" not in m and m["rewards/masked"] == 0 and m["rewards/length/errors"] == 0
    assert RewardRunner(["reward_fns:always_none"], workers=0)(["p"], ["a"]).rewards == [None]  # all None -> None


def test_in_process_errors_are_retried_per_item():
    runner = RewardRunner(
        [RewardSpec("reward_fns:behave"), RewardSpec(lambda p, c, **_: [1.0] * len(c), name="one")], 0, chunk_size=4
    )
    res = runner(["p"] * 5, ["1", "boom", "none", "2", "3"])
    assert res.per_function["behave"] == [1.0, None, None, 2.0, 3.0]
    assert res.status["behave"] == ["scored", "error", "none", "scored", "scored"]
    assert res.rewards == [2.0, None, 1.0, 3.0, 4.0]  # an error masks the sample even though "one" scored it
    assert res.stats["behave"].first_error == "ZeroDivisionError: boom on purpose"
    assert res.problems() == ["reward 'behave': 1 error: ZeroDivisionError: boom on purpose"]
    assert res.metrics()["rewards/masked"] == 1 and res.metrics()["rewards/behave/errors"] == 1


def test_bad_runner_arguments():
    with pytest.raises(ConfigError, match="use workers=0"):
        RewardRunner([RewardSpec(lambda p, c, **_: [0.0] * len(c), name="lam")], workers=1)
    with pytest.raises(ConfigError, match="reward workers"):
        RewardRunner(["math"], workers=-1)
    with pytest.raises(ConfigError, match="chunk_size"):
        RewardRunner(["math"], chunk_size=0)
    with pytest.raises(UserError, match="no attribute"):
        RewardRunner(["reward_fns:nope"])
    runner = RewardRunner(["reward_fns:length"], workers=0)
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 prompts"):
        runner(["a", "b"], ["x", "y"], {"answer": ["1"]})
    assert runner([], []).rewards == []


# --------------------------------------------------------------------------------------------- worker processes


@pytest.fixture
def runner():
    r = RewardRunner(
        [RewardSpec("reward_fns:behave", timeout=1.5, name="b"), RewardSpec("reward_fns:length", weight=0.5)],
        workers=2,
        chunk_size=4,
    )
    yield r
    pids = r.worker_pids()
    r.close()
    assert r.worker_pids() == [] and wait_gone(pids) == []


def test_workers_score_like_in_process(runner):
    prompts, completions = ["p"] * 7, ["1", "2", "none", "4", "5", "66", "7"]
    res = runner(prompts, completions, {"answer": list(completions)})
    inline = RewardRunner(runner.specs, workers=0, chunk_size=3)(prompts, completions, {"answer": list(completions)})
    assert res == inline
    assert res.rewards == [1.5, 2.5, 2.0, 4.5, 5.5, 67.0, 7.5]  # "none": only length counts


def test_hanging_item_times_out_alone(runner):
    start = time.monotonic()
    res = runner(["p"] * 6, ["1", "hang", "3", "4", "5", "6"])
    took = time.monotonic() - start
    assert took < 1.5 * 2 + 15, took  # the chunk's timeout, the item's own, worker start-up: never the hour
    assert res.status["b"] == ["scored", "timeout", "scored", "scored", "scored", "scored"]
    assert res.rewards == [1.5, None, 3.5, 4.5, 5.5, 6.5]
    assert res.stats["b"].timeout == 1 and res.stats["b"].error == 0 and res.stats["length"].scored == 6
    assert res.metrics()["rewards/b/timeouts"] == 1 and res.problems() == ["reward 'b': 1 timeout"]
    again = runner(["p"] * 3, ["7", "8", "9"])  # the killed worker was replaced
    assert again.rewards == [7.5, 8.5, 9.5] and len(runner.worker_pids()) <= 2


def test_raising_and_dying_items(runner):
    res = runner(["p"] * 8, ["1", "boom", "3", "4", "5", "exit", "7", "8"])
    assert res.status["b"] == ["scored", "error", "scored", "scored", "scored", "error", "scored", "scored"]
    assert res.rewards == [1.5, None, 3.5, 4.5, 5.5, None, 7.5, 8.5]
    assert res.stats["b"].error == 2
    assert res.stats["b"].first_error in ("ZeroDivisionError: boom on purpose", "the worker process died (exit code 1)")
    assert runner(["p"], ["2"]).rewards == [2.5]


def test_contract_violations_in_workers():
    with RewardRunner(["reward_fns:wrong_length", "reward_fns:not_a_number"], workers=2, chunk_size=2) as r:
        res = r(["p"] * 3, ["ok", "bad", "ok"])
    assert res.status["wrong_length"] == ["error"] * 3  # wrong on every retry too
    assert res.stats["wrong_length"].first_error.startswith("contract violation: reward function 'wrong_length'")
    assert res.status["not_a_number"] == ["scored", "error", "scored"]
    assert "'1.0' (str)" in res.stats["not_a_number"].first_error
    assert res.rewards == [None] * 3


def test_timeout_kills_what_the_function_started(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    with RewardRunner([RewardSpec("reward_fns:behave", timeout=2.0)], workers=1) as r:
        res = r(["p"], ["fork-hang"], {"pidfile": [str(pidfile)]})
        assert res.status["behave"] == ["timeout"]
        assert wait_gone([int(pidfile.read_text())]) == []  # the worker's whole process group was killed


def test_workers_run_single_threaded():
    before = os.environ.get("OMP_NUM_THREADS")
    with RewardRunner(["reward_fns:environment"], workers=1) as r:
        res = r(["p", "p"], ["omp", "pid"])
        assert res.rewards[0] == 1.0 and res.rewards[1] in r.worker_pids() and res.rewards[1] != os.getpid()
    assert os.environ.get("OMP_NUM_THREADS") == before


@pytest.mark.parametrize("started_in", ["main thread", "call thread"])
def test_no_worker_outlives_a_killed_parent(tmp_path, started_in):
    """The parent is SIGKILLed while both workers hang in a call: the workers die too."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, signal, sys, threading, time
        sys.path.insert(0, {str(TESTS)!r})
        from alignkit.rewards import RewardRunner, RewardSpec

        if __name__ == "__main__":
            runner = RewardRunner([RewardSpec("reward_fns:behave", timeout=600)], workers=2, chunk_size=1)
            if {started_in == "main thread"}:
                runner.start()
            threading.Thread(target=runner, args=(["p", "p"], ["hang", "hang"]), daemon=True).start()
            deadline = time.monotonic() + 60
            while not (len(runner._pool) == 2 and all(w.task for w in runner._pool)) and time.monotonic() < deadline:
                time.sleep(0.05)
            print(json.dumps(runner.worker_pids()), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    pids = json.loads(proc.stdout)
    assert len(pids) == 2 and wait_gone(pids) == []


@pytest.mark.parametrize("how", ["exit without close", "garbage collected"])
def test_no_worker_outlives_its_runner(tmp_path, how):
    """Leaving the interpreter (or dropping the runner) without close() stops the workers, without hanging."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import gc, json, sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from alignkit.rewards import RewardRunner

        if __name__ == "__main__":
            runner = RewardRunner(["reward_fns:length"], workers=2, chunk_size=1)
            assert runner(["p", "p"], ["a", "bb"]).rewards == [1.0, 2.0]
            pids = runner.worker_pids()
            print(json.dumps(pids), flush=True)
            if {how == "garbage collected"}:
                del runner
                gc.collect()
                time.sleep(0.5)
                print(json.dumps([p for p in pids if open(f"/proc/{{p}}/stat").read().split()[2] != "Z"]
                                 if all(__import__("os").path.exists(f"/proc/{{p}}") for p in pids) else []))
        """)
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    pids = json.loads(lines[0])
    assert len(pids) == 2 and wait_gone(pids) == []
    if how == "garbage collected":
        assert json.loads(lines[1]) == []  # gone while the parent still ran


def test_functions_that_load_only_in_the_parent(tmp_path):
    path = tmp_path / "parent_only.py"
    path.write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise RuntimeError('not in workers')\n"
        "def f(prompts, completions, **_):\n"
        "    return [1.0] * len(completions)\n"
    )
    runner = RewardRunner([f"{path}:f"], workers=1)
    with pytest.raises(UserError, match="could not load the reward functions.*not in workers.*workers=0"):
        runner(["p"], ["c"])
    assert runner.worker_pids() == []
    assert RewardRunner([f"{path}:f"], workers=0)(["p"], ["c"]).rewards == [1.0]
