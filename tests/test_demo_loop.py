"""The loop demo's parts on the tiny model (the whole demo, ~15 minutes on the embedded model, is `alignkit demo
--method loop`; its numbers are in docs/serving.md): the simulated users' policy against a real server, the
deliberately bad candidate, the output-directory guard, and the report from a real loop run's store."""

from __future__ import annotations

import time

import pytest
import torch
from serve_helpers import serve_process

from alignkit.errors import UserError
from alignkit.outputs import own_output_dir
from alignkit.recipes.demo_loop import run_loop_demo, scrambled_candidate
from alignkit.recipes.simulated_users import SimulatedUsers, UserPolicy
from alignkit.serve.rollout import RolloutState
from alignkit.serve.store import Store

PROBLEMS = [{"prompt": "What is 2 + 3? Give the final answer as a number after 'Answer:'.", "answer": "5"}]


def test_simulated_users_chat_and_rate_by_their_policy(tiny_model_dir, tmp_path):
    db = tmp_path / "s.sqlite"
    with serve_process(["--variant", f"base={tiny_model_dir}", "--db", str(db)], tmp_path / "server.log") as url:
        users = SimulatedUsers(url, PROBLEMS, UserPolicy(users=10, clients=2, max_tokens=4, yes_men=0.3, seed=1))
        pool = users.start()
        deadline = time.monotonic() + 60
        while sum(users.traffic.ratings.values()) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        users.paused.set()  # paused users send nothing
        time.sleep(0.5)
        paused_at = sum(users.traffic.ratings.values())
        time.sleep(1.0)
        assert sum(users.traffic.ratings.values()) <= paused_at + 2  # at most the requests already in flight
        users.stop.set()
        pool.shutdown(wait=True)
    assert not users.traffic.errors, users.traffic.errors
    yes_men = {u for u, kind in users.kinds.items() if kind == "yes_man"}
    assert 0 < len(yes_men) < 10
    with Store(str(db)) as store:
        feedback = store.feedback()
    assert len(feedback) == sum(users.traffic.ratings.values())
    from alignkit.serve.ab import user_hash

    by_yes_man = [f["value"] for f in feedback if f["user_hash"] in {user_hash(u) for u in yes_men}]
    assert by_yes_man and set(by_yes_man) == {"up"}  # yes-men approve everything
    careful = [f["value"] for f in feedback if f["user_hash"] not in {user_hash(u) for u in yes_men}]
    assert careful.count("down") > careful.count("up")  # the random tiny model gets arithmetic wrong


def test_the_bad_candidate_is_the_champion_scrambled(tiny_model_dir, tmp_path):
    from alignkit.models import load_model
    from alignkit.recipes.loop import LoopConfig

    state = RolloutState(champion="base", sources={"base": tiny_model_dir})
    report = scrambled_candidate(LoopConfig(seed=3), state, tmp_path / "gen")
    assert report["wins"] and "deliberately bad" in report["gate_skipped"]
    good = load_model(tiny_model_dir, torch.float32, torch.device("cpu"))
    bad = load_model(report["model_dir"], torch.float32, torch.device("cpu"))
    gw, bw = good.model.layers[0].mlp.up_proj.weight, bad.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(gw, bw) and 0.8 < float((bw - gw).std() / gw.std()) < 1.2


def test_the_demo_refuses_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(UserError, match="alignkit did not write there"):
        run_loop_demo(str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "precious" and len(list(tmp_path.iterdir())) == 1
    own_output_dir(tmp_path / "new", "demo loop")
    own_output_dir(tmp_path / "new", "demo loop")  # its own earlier run: replaced
    with pytest.raises(UserError, match="alignkit did not write there"):
        own_output_dir(tmp_path / "new", "demo grpo")  # another command's output is not the loop demo's
