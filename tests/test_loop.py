"""The continual-alignment loop: the pure stage rules, then the loop's state machine against a real `alignkit serve`
process (promote stage by stage, hold, roll back on a worse candidate, a crashed retrain that leaves the fleet
untouched, resume after the server was killed), and `alignkit loop run` killed with SIGKILL in the middle of a real
retrain and restarted. Training in the in-process tests is a stand-in that returns the tiny model as the candidate
(the loop's decisions are what is under test); the subprocess test runs the real retrain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx2 as httpx
import pytest
from serve_helpers import serve_process

from alignkit.errors import ConfigError
from alignkit.recipes.loop import Fleet, Loop, LoopConfig, load_loop_config
from alignkit.serve.rollout import RolloutState, StageRules, replay, stage_decision, weights_for
from alignkit.serve.store import Store

# ---------------------------------------------------------------------------------------------- the stage rules


def decision(action: str, candidate: str = "cand-1") -> dict:
    return {"candidate": candidate, "action": action, "sentence": f"{action} {candidate}"}


def staged(stage: int = 0, share: float = 0.05, started: float = 100.0) -> RolloutState:
    return RolloutState(champion="base", phase="staged", candidate="cand-1", stage=stage, share=share,
                        stage_started=started)  # fmt: skip


def test_stage_rules_advance_hold_promote_and_roll_back():
    rules = StageRules(stages=(0.05, 0.25), min_stage_seconds=60)
    up = {"decisions": [decision("promote")], "monitor": {"variants": {}}}
    assert stage_decision(staged(), up, rules, now=200)["action"] == "advanced"
    assert stage_decision(staged(), up, rules, now=200)["share"] == 0.25
    early = stage_decision(staged(), up, rules, now=130)
    assert early["action"] == "held" and "30s more" in early["reason"]
    assert stage_decision(staged(1, 0.25), up, rules, now=200)["action"] == "promoted"
    wait = {"decisions": [decision("keep_collecting")], "monitor": {}}
    assert stage_decision(staged(), wait, rules, now=200)["action"] == "held"
    worse = {"decisions": [decision("roll_back")], "monitor": {}}
    assert stage_decision(staged(), worse, rules, now=200)["action"] == "rolled_back"
    alarm = {"decisions": [decision("promote")],
             "monitor": {"variants": {"cand-1": {"repetition": {"alarm": True, "reason": "loops"}}}}}  # fmt: skip
    rolled = stage_decision(staged(), alarm, rules, now=200)
    assert rolled["action"] == "rolled_back" and "repetition: loops" in rolled["reason"]
    ignored = {"decisions": [decision("promote")],
               "monitor": {"variants": {"cand-1": {"thumbs_up_drop": {"alarm": True}}}}}  # fmt: skip
    assert stage_decision(staged(), ignored, rules, now=200)["action"] == "advanced"  # not a rollback detector


def test_replay_rebuilds_the_state_from_events():
    ev = lambda action, **kw: {"action": action, "created": kw.pop("t", 1.0), "numbers": kw.pop("n", {}), **kw}  # noqa: E731
    events = [
        ev("retrain_started", n={"generation": 1, "watermark": 5.0}),
        ev("deployed", candidate="cand-1", share=0.05, n={"source": "/m/1", "train_data": "/d/1"}, t=2.0),
        ev("advanced", candidate="cand-1", share=0.25, n={"stage": 1}, t=3.0),
    ]
    s = replay(events, "base")
    assert (s.phase, s.candidate, s.stage, s.share, s.stage_started) == ("staged", "cand-1", 1, 0.25, 3.0)
    assert s.sources["cand-1"] == "/m/1" and s.train_data == "/d/1" and s.watermark == 5.0
    assert weights_for(s, ["base", "cand-1", "old"]) == {"base": 0.75, "cand-1": 0.25, "old": 0.0}
    s = replay([*events, ev("promoted", candidate="cand-1", share=1.0)], "base")
    assert (s.champion, s.candidate, s.phase) == ("cand-1", None, "idle")
    s = replay([*events, ev("rolled_back", candidate="cand-1", share=0.0)], "base")
    assert (s.champion, s.candidate, s.phase) == ("base", None, "idle")
    assert replay(events[:1], "base").phase == "training"
    failed = replay([events[0], ev("retrain_failed", n={"generation": 1})], "base")
    assert (failed.phase, failed.watermark, failed.generation) == ("idle", 0.0, 1)  # its feedback counts again


def test_bad_loop_config_is_one_clear_error(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("db: x.sqlite\nservers: [http://127.0.0.1:1]\njudge: verifier:math\nstages: [0.5, 0.25]\n")
    with pytest.raises(ConfigError, match="stages.*increasing"):
        load_loop_config(str(path))
    path.write_text("db: x.sqlite\nservers: [localhost:8000]\njudge: verifier:math\n")
    with pytest.raises(ConfigError, match="servers"):
        load_loop_config(str(path))
    path.write_text("db: x.sqlite\nservers: [http://a]\njudge: verifier:math\nrollback_detectors: [nope]\n")
    with pytest.raises(ConfigError, match="rollback_detectors"):
        load_loop_config(str(path))
    path.write_text("db: x.sqlite\nservers: [http://a]\njudge: verifier:math\nmin_nn: 3\n")
    with pytest.raises(ConfigError, match="min_nn"):
        load_loop_config(str(path))


# ---------------------------------------------------------------------------------- the loop against a server


def talk(url: str, variant: str, users: range, value: str) -> None:
    """One chat per user with ``variant``, each rated ``value`` by its user."""
    for i in users:
        user = f"{variant}-user-{i}"
        body = {"model": variant, "user": user, "max_tokens": 2, "messages": [{"role": "user", "content": f"q{i}"}]}
        rid = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["id"]
        r = httpx.post(f"{url}/v1/feedback", json={"response_id": rid, "value": value, "user": user})
        assert r.status_code == 201, r.text


class StandIn:
    """The generation step of the in-process tests: the tiny model as the candidate, a fixed gate result, or a
    crash."""

    def __init__(self, model_dir: str):
        self.model_dir, self.rate, self.crash, self.calls = model_dir, 0.8, False, 0

    def __call__(self, cfg, state, out):
        self.calls += 1
        if self.crash:
            raise RuntimeError("simulated out of memory in training")
        judged = {"rate": self.rate, "n": 10, "bootstrap": [self.rate - 0.1, self.rate + 0.1]}
        return {"judged": judged, "wins": self.rate > cfg.min_win_rate, "model_dir": self.model_dir, "mix": {},
                "export": {"read": {"ratings": 0}}}  # fmt: skip


@pytest.fixture
def served(tiny_model_dir, tmp_path):
    db = tmp_path / "store.sqlite"
    args = ["--variant", f"base={tiny_model_dir}", "--db", str(db), "--max-tokens", "8"]
    procs: list = []
    with serve_process(args, tmp_path / "server.log", procs=procs) as url:
        yield url, db, args, procs[0]


def loop_config(url: str, db, tmp_path, **kw) -> LoopConfig:
    cfg = LoopConfig(db=str(db), servers=[url], champion="base", out=str(tmp_path / "loop"), judge="verifier:math",
                     min_new_feedback=4, stages=[0.25, 0.5], min_n=3, margin=0.05, check_every_s=0.1, **kw)  # fmt: skip
    cfg.validate()
    return cfg


def server_weights(url: str) -> dict:
    return httpx.get(f"{url}/admin/weights").json()["weights"]


def test_the_loop_deploys_holds_advances_and_promotes(served, tiny_model_dir, tmp_path):
    url, db, _, _ = served
    train = StandIn(tiny_model_dir)
    with Store(db) as store:
        loop = Loop(loop_config(url, db, tmp_path), store, train=train)
        loop.resume()
        assert loop.tick() is None  # no feedback yet: nothing to do
        talk(url, "base", range(4), "down")
        event = loop.tick()
        assert event["action"] == "deployed" and event["candidate"] == "cand-1" and event["share"] == 0.25
        assert server_weights(url) == {"base": 0.75, "cand-1": 0.25}
        assert loop.tick()["action"] == "held"  # no ratings in this stage yet
        assert loop.tick() is None  # the same hold is not recorded twice
        talk(url, "cand-1", range(4), "up")
        talk(url, "base", range(10, 14), "down")
        event = loop.tick()
        assert event["action"] == "advanced" and server_weights(url) == {"base": 0.5, "cand-1": 0.5}
        assert event["numbers"]["decision"]["action"] == "promote"
        assert loop.tick()["action"] == "held"  # the new stage needs its own evidence
        talk(url, "cand-1", range(20, 24), "up")
        talk(url, "base", range(20, 24), "down")
        assert loop.tick()["action"] == "promoted"
        assert server_weights(url) == {"base": 0.0, "cand-1": 1.0}
        events = [e["action"] for e in store.rollout_events("loop")]
    assert events == ["retrain_started", "deployed", "held", "advanced", "held", "promoted"]
    assert loop.state().champion == "cand-1" and train.calls == 1
    metrics = httpx.get(f"{url}/metrics").text
    assert 'alignkit_rollout_events{action="promoted"} 1.0' in metrics
    assert 'alignkit_rollout_candidate_share{loop="loop"} 1.0' in metrics
    page = httpx.get(f"{url}/rollout")
    assert page.status_code == 200 and "promoted" in page.text and "cand-1" in page.text
    from typer.testing import CliRunner

    from alignkit.cli.main import app

    stats = CliRunner().invoke(app, ["feedback", "stats", "--db", str(db), "--min-n", "1"])
    assert stats.exit_code == 0 and "rollout decisions" in stats.output and "promoted" in stats.output


def test_a_worse_candidate_is_rolled_back_and_a_crashed_retrain_changes_nothing(served, tiny_model_dir, tmp_path):
    url, db, _, _ = served
    train = StandIn(tiny_model_dir)
    with Store(db) as store:
        loop = Loop(loop_config(url, db, tmp_path), store, train=train)
        loop.resume()
        talk(url, "base", range(4), "up")
        assert loop.tick()["action"] == "deployed"
        talk(url, "cand-1", range(6), "down")
        talk(url, "base", range(10, 16), "up")
        event = loop.tick()
        assert event["action"] == "rolled_back" and "significantly worse" in event["reason"]
        assert server_weights(url) == {"base": 1.0, "cand-1": 0.0}

        train.crash = True  # the next generation's training dies
        before = (server_weights(url), [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]])
        talk(url, "base", range(30, 34), "up")
        event = loop.tick()
        assert event["action"] == "retrain_failed" and "simulated out of memory" in event["reason"]
        assert (server_weights(url), [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]) == before

        train.crash, train.rate = False, 0.3  # and a candidate that loses the offline gate is never deployed
        talk(url, "base", range(40, 44), "up")
        event = loop.tick()
        assert event["action"] == "gate_failed" and "not deployed" in event["reason"]
        assert server_weights(url) == before[0]


def test_resume_after_the_server_was_killed(served, tiny_model_dir, tmp_path):
    url, db, args, proc = served
    with Store(db) as store:
        loop = Loop(loop_config(url, db, tmp_path), store, train=StandIn(tiny_model_dir))
        loop.resume()
        talk(url, "base", range(4), "up")
        assert loop.tick()["action"] == "deployed"
        proc.send_signal(signal.SIGKILL)  # the server dies mid-rollout
        proc.wait(10)
        assert loop.tick()["action"] == "held"  # decisions come from the store, which outlives the server
    with serve_process(args, tmp_path / "second.log") as url2:  # a fresh process: cand-1 is not loaded there
        assert "cand-1" not in [m["id"] for m in httpx.get(f"{url2}/v1/models").json()["data"]]
        with Store(db) as store:
            cfg = loop_config(url2, db, tmp_path)
            loop = Loop(cfg, store, train=StandIn(tiny_model_dir))
            state = loop.resume()
            assert (state.phase, state.candidate, state.share) == ("staged", "cand-1", 0.25)
            assert server_weights(url2) == {"base": 0.75, "cand-1": 0.25}
            assert [e["action"] for e in store.rollout_events("loop")].count("deployed") == 1  # no second deploy
            with pytest.raises(ConnectionError):  # a server that is away: run() logs it and looks again later
                Loop(loop_config(url, db, tmp_path), store, train=StandIn(tiny_model_dir)).resume()


def test_fleet_errors_are_connection_errors():
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        Fleet(["http://127.0.0.1:1"], timeout=2).variants("http://127.0.0.1:1")


# ------------------------------------------------------------------- `alignkit loop run`, killed and restarted

UNBUFFERED = {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_loop_command_resumes_after_sigkill_in_a_real_retrain(served, tiny_model_dir, reward_model_dir, tmp_path):
    url, db, _, _ = served
    talk(url, "base", range(6), "up")
    talk(url, "base", range(6, 12), "down")
    config = tmp_path / "loop.yaml"
    config.write_text(
        f"db: {db}\nservers: [{url}]\nchampion: base\nchampion_source: {tiny_model_dir}\nout: {tmp_path / 'runs'}\n"
        f"judge: reward_model:{reward_model_dir}\neval_prompts: builtin:helpful_prompts.jsonl\ngate_limit: 4\n"
        "gate_max_new_tokens: 8\nmin_win_rate: 0.0\nmin_new_feedback: 10\nstages: [0.5]\nmin_n: 3\n"
        "check_every_s: 0.2\nmax_generations: 2\ntrain_config: configs/retrain_kto.yaml\n"
        "train_overrides: [train.max_steps=2, train.batch_size=4, data.eval_fraction=0.0, data.max_length=64]\n"
    )  # fmt: skip
    cmd = [sys.executable, "-m", "alignkit", "loop", "run", "--config", str(config)]
    log = open(tmp_path / "loop.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=UNBUFFERED)
    try:
        deadline = time.monotonic() + 120
        with Store(db) as store:
            while not store.rollout_events("loop"):
                assert proc.poll() is None and time.monotonic() < deadline, open(tmp_path / "loop.log").read()
                time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # in the middle of the retrain it just started
        proc.wait(10)
    finally:
        log.close()
    with Store(db) as store:
        assert [e["action"] for e in store.rollout_events("loop")] == ["retrain_started"]
    assert server_weights(url) == {"base": 1.0}  # the fleet was not touched
    log = open(tmp_path / "loop2.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=UNBUFFERED)  # restarted
    try:
        deadline = time.monotonic() + 120
        with Store(db) as store:
            # a hold follows a deploy once its weights are set (its stage has no traffic yet)
            while not {"held", "gate_failed"} & {e["action"] for e in store.rollout_events("loop")}:
                assert proc.poll() is None and time.monotonic() < deadline, open(tmp_path / "loop2.log").read()
                time.sleep(0.2)
            events = store.rollout_events("loop")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    actions = [e["action"] for e in events]
    assert actions[:3] == ["retrain_started", "retrain_failed", "retrain_started"], actions
    assert "killed or crashed" in events[1]["reason"] and events[2]["numbers"]["generation"] == 2
    if actions[3] == "deployed":  # the retrained model passed its gate: served at the first stage
        assert events[3]["candidate"] == "cand-2" and server_weights(url) == {"base": 0.5, "cand-2": 0.5}
    status = subprocess.run([sys.executable, "-m", "alignkit", "loop", "status", "--db", str(db)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0 and "retrain_failed" in status.stdout
