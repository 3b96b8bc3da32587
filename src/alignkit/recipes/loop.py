"""Continual alignment, as one long-running command next to running servers (spec 001 q4, phases 5-7):

    traffic -> feedback -> (enough new?) export + mix + retrain (KTO on thumbs, DPO on votes) -> offline gate
    (judge vs the serving model) -> deploy at 5% -> 10% -> 25% -> 50% -> promoted, each stage only when the
    stage's own traffic says promote; held while it says keep collecting; rolled back at once when the candidate
    is significantly worse or a failure detector alarms on it.

The store is the loop's memory: every decision is a ``rollout_events`` row with the numbers behind it, and
``Loop.state()`` replays them, so a restarted loop resumes where it was (a retrain cut short is recorded as failed;
a staged candidate gets its stage's weights re-applied, never a second deploy). Servers are driven over their
admin API only, and only after a candidate passed its gate: a crashed retrain leaves the fleet untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.config.base import load_config, require, setting
from alignkit.errors import UserError
from alignkit.outputs import finite
from alignkit.serve.rollout import STAGES, RolloutState, StageRules, replay, stage_decision, weights_for

log = logging.getLogger("alignkit.loop")


@dataclass
class LoopConfig:
    """``alignkit loop run --config configs/loop.yaml``: one loop (``name``) over one store and its servers."""

    db: str | None = setting(None, "The store the servers write to (SQLite path or postgresql+psycopg:// URL)")
    servers: list = setting([], "Base URLs of every server (replica) to drive, e.g. [http://127.0.0.1:8000]")
    admin_key: str | None = setting(None, "The servers' admin key (or ALIGNKIT_ADMIN_KEY)")
    name: str = setting("loop", "This loop's name in the store (its events; one loop per name)")
    champion: str = setting("default", "The variant serving now (the first baseline)")
    champion_source: str | None = setting(None, "Its model: a model or adapter dir; empty = the embedded model")
    out: str = setting("runs/loop", "Directory for each generation's data, model and report")
    method: str = setting("kto", "kto (thumbs) or dpo (pairs from thumbs and comparison votes)", ("kto", "dpo"))
    train_config: str | None = setting(None, "Training YAML to start from (e.g. configs/retrain_kto.yaml)")
    train_overrides: list = setting([], "Training overrides, e.g. [train.max_steps=20]")
    previous: str | None = setting(None, "The data the first champion was trained on (mixed into the first retrain)")
    mix: float = setting(0.5, "Share of fresh feedback in each training set")
    judge: str | None = setting(None, "Offline gate judge, e.g. verifier:math or reward_model:DIR")
    eval_prompts: str = setting("builtin:helpful_prompts.jsonl", "Held-out prompts of the offline gate")
    gate_limit: int = setting(50, "Held-out prompts judged by the gate")
    gate_max_new_tokens: int = setting(128, "Tokens per gate answer")
    min_win_rate: float = setting(0.5, "Deploy only above this gate win rate (ties half)")
    min_new_feedback: int = setting(100, "Retrain once this many new ratings arrived since the last retrain")
    min_retrain_interval_s: float = setting(0.0, "And at least this long after the last retrain started")
    stages: list = setting(list(STAGES), "The candidate's traffic shares; passing the last promotes it to 100%")
    margin: float = setting(0.05, "A/B decision: the thumbs-up lead that promotes")
    min_n: int = setting(100, "A/B decision: ratings per variant within a stage")
    alpha: float = setting(0.05, "A/B decision: 1 - confidence of the difference's interval")
    min_stage_seconds: float = setting(0.0, "The least time at each stage")
    rollback_detectors: list = setting(["length_explosion", "repetition", "safety_spike"],
                                       "Failure detectors whose alarm on the candidate rolls it back")  # fmt: skip
    monitor: dict = setting({}, "Options of the failure detectors (serve.monitor.Monitor), e.g. {window: 50}")
    check_every_s: float = setting(30.0, "Seconds between two looks at the store")
    record_hold_every_s: float = setting(300.0, "A hold with the same kind of reason is recorded at most this often")
    max_generations: int = setting(0, "Stop after this many retrains (0 = run until stopped)")
    candidate_prefix: str = setting("cand", "Candidates are served as PREFIX-1, PREFIX-2, ...")
    seed: int = setting(0, "Seed of the mixing and the gate")
    device: str = setting("auto", "Device of training and the gate")

    def validate(self, where: str = "loop config") -> None:
        require(bool(self.db), where, "db", self.db, "give the store the servers write to")
        require(bool(self.servers) and all(isinstance(s, str) and s.startswith(("http://", "https://"))
                                           for s in self.servers), where, "servers", self.servers,
                "list the servers' base URLs, e.g. [http://127.0.0.1:8000]")  # fmt: skip
        require(bool(self.judge), where, "judge", self.judge, "name the gate's judge, e.g. verifier:math")
        require(0 < self.mix <= 1, where, "mix", self.mix, "use a share in (0, 1], e.g. 0.5")
        require(0 <= self.min_win_rate < 1, where, "min_win_rate", self.min_win_rate, "use a rate in [0, 1)")
        stages = list(self.stages)
        ok = bool(stages) and all(isinstance(s, (int, float)) and 0 < s < 1 for s in stages)
        require(ok and stages == sorted(set(stages)), where, "stages", self.stages,
                "give increasing shares in (0, 1), e.g. [0.05, 0.1, 0.25, 0.5]")  # fmt: skip
        require(self.min_new_feedback >= 1, where, "min_new_feedback", self.min_new_feedback, "use at least 1")
        require(0 <= self.margin < 1, where, "margin", self.margin, "use a difference in [0, 1), e.g. 0.05")
        require(self.min_n >= 1, where, "min_n", self.min_n, "use at least 1 rating per variant")
        require(0 < self.alpha < 1, where, "alpha", self.alpha, "use e.g. 0.05")
        require(self.check_every_s > 0, where, "check_every_s", self.check_every_s, "use a positive number")
        from alignkit.serve.monitor import DETECTORS

        unknown = sorted(set(self.rollback_detectors) - set(DETECTORS))
        require(not unknown, where, "rollback_detectors", unknown, f"use some of {', '.join(DETECTORS)}")
        require(self.gate_limit >= 1, where, "gate_limit", self.gate_limit, "judge at least 1 prompt")

    def rules(self) -> StageRules:
        return StageRules(tuple(float(s) for s in self.stages), self.margin, self.min_n, self.alpha,
                          self.min_stage_seconds, tuple(self.rollback_detectors))  # fmt: skip


def load_loop_config(path: str | None, overrides: list[str] = ()) -> LoopConfig:
    """The loop's config from YAML and ``key=value`` overrides, checked (one ConfigError naming the field)."""
    import os

    cfg = load_config(LoopConfig, path, overrides)
    cfg.admin_key = cfg.admin_key or os.environ.get("ALIGNKIT_ADMIN_KEY") or None
    return cfg


class Fleet:
    """The servers (replicas on one store) over their admin API: variants served, add a variant, set weights."""

    def __init__(self, servers: list[str], admin_key: str | None = None, timeout: float = 600.0):
        self.servers = [s.rstrip("/") for s in servers]
        self.headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.timeout = timeout

    def _call(self, method: str, url: str, **kw):
        import httpx2 as httpx

        try:
            r = httpx.request(method, url, headers=self.headers, timeout=self.timeout, **kw)
        except httpx.HTTPError as e:
            raise ConnectionError(f"{url}: {type(e).__name__}: {e}") from None
        if r.status_code >= 400:
            raise ConnectionError(f"{method} {url} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def variants(self, server: str) -> list[str]:
        return [m["id"] for m in self._call("GET", f"{server}/v1/models")["data"]]

    def ensure(self, name: str, source: str) -> None:
        """Serve ``source`` as ``name`` (weight 0) on every server that does not serve it yet."""
        for server in self.servers:
            if name not in self.variants(server):
                self._call("POST", f"{server}/admin/variants", json={"name": name, "source": source, "weight": 0.0})

    def set_weights(self, state: RolloutState) -> dict:
        """The weights of ``state`` on the first server (the others follow through the store)."""
        weights = weights_for(state, self.variants(self.servers[0]))
        current = self._call("GET", f"{self.servers[0]}/admin/weights")["weights"]
        if all(abs(current.get(k, 0.0) - w) < 1e-9 for k, w in weights.items()):
            return current
        return self._call("PUT", f"{self.servers[0]}/admin/weights", json={"weights": weights})["weights"]


def gate_and_train(cfg: LoopConfig, state: RolloutState, out: Path) -> dict:
    """One generation: ``recipes.retrain`` (export, mix, train, judge vs the champion) without deploying."""
    from alignkit.recipes.retrain import RetrainConfig, retrain

    rc = RetrainConfig(
        db=cfg.db, out=str(out), judge=cfg.judge, base=state.sources.get(state.champion), mix=cfg.mix,
        previous=state.train_data or cfg.previous, method=cfg.method, config=cfg.train_config,
        overrides=list(cfg.train_overrides), eval_prompts=cfg.eval_prompts, limit=cfg.gate_limit,
        max_new_tokens=cfg.gate_max_new_tokens, min_win_rate=cfg.min_win_rate, seed=cfg.seed, device=cfg.device,
    )  # fmt: skip
    return retrain(rc, log=lambda m: log.info("retrain: %s", m))


class Loop:
    """The loop of ``cfg`` over ``store`` and ``fleet``; ``train`` is the generation step (``gate_and_train``)."""

    def __init__(self, cfg: LoopConfig, store, fleet: Fleet | None = None, train=gate_and_train):
        self.cfg, self.store, self.train = cfg, store, train
        self.fleet = fleet or Fleet(cfg.servers, cfg.admin_key)

    def state(self) -> RolloutState:
        return replay(self.store.rollout_events(self.cfg.name), self.cfg.champion, self.cfg.champion_source)

    def record(self, state: RolloutState, action: str, reason: str, numbers: dict, candidate=None, share=None):
        row = {"loop": self.cfg.name, "action": action, "champion": state.champion, "reason": reason,
               "candidate": candidate if candidate is not None else state.candidate,
               "share": share if share is not None else state.share, "numbers": finite(numbers)}  # fmt: skip
        log.info("%s: %s", action, reason)
        return self.store.add_rollout_event(row)

    def resume(self) -> RolloutState:
        """After a restart: a retrain that was cut short is recorded as failed; a staged candidate is served again
        (if a server lost it) at its stage's weights."""
        state = self.state()
        if state.phase == "training":
            self.record(state, "retrain_failed", "the loop stopped during this retrain (killed or crashed); the "
                        "servers were not touched", {"generation": state.generation})  # fmt: skip
            state = self.state()
        if state.phase == "staged":
            self.fleet.ensure(state.candidate, state.sources[state.candidate])
            self.fleet.set_weights(state)
        elif state.phase == "idle" and self.store.rollout_events(self.cfg.name, last=1):
            self.fleet.set_weights(state)  # a promotion or rollback this loop recorded, held on the fleet
        return state

    def tick(self, now: float | None = None) -> dict | None:
        """One look at the store -> the event recorded, or None when nothing was due."""
        now = time.time() if now is None else now
        state = self.state()
        if state.phase == "staged":
            return self._stage(state, now)
        if state.phase == "idle":
            return self._maybe_retrain(state, now)
        return None

    def _maybe_retrain(self, state: RolloutState, now: float) -> dict | None:
        cfg = self.cfg
        if cfg.max_generations and state.generation >= cfg.max_generations:
            return None
        if state.last_retrain is not None and now - state.last_retrain < cfg.min_retrain_interval_s:
            return None
        fresh = [f for f in self.store.feedback(since=state.watermark) if f["created"] > state.watermark]
        if len(fresh) < cfg.min_new_feedback:
            return None
        generation = state.generation + 1
        watermark = max(f["created"] for f in fresh)
        started = {"generation": generation, "watermark": watermark, "new_feedback": len(fresh)}
        self.record(state, "retrain_started", f"{len(fresh)} new ratings since the last retrain (>= "
                    f"{cfg.min_new_feedback}): generation {generation}", started)  # fmt: skip
        state = self.state()
        out = Path(cfg.out) / f"gen-{generation}"
        try:
            report = self.train(cfg, state, out)
        except Exception as e:  # noqa: BLE001 - a failed retrain is recorded; the fleet stays as it is
            log.exception("retrain of generation %d failed", generation)
            return self.record(state, "retrain_failed", f"{type(e).__name__}: {str(e)[:500]}",
                               {"generation": generation})  # fmt: skip
        judged = report["judged"]
        numbers = {"generation": generation, "gate": judged, "export": report.get("export", {}).get("read"),
                   "mix": report.get("mix"), "source": str(Path(report["model_dir"]).resolve()),
                   "train_data": str(out / "train.jsonl")}  # fmt: skip
        if report.get("gate_skipped"):
            gate = f"gate skipped: {report['gate_skipped']}"
        else:
            gate = (f"gate: win rate {judged['rate']:.3f} over {state.champion} on {judged['n']} held-out prompts "
                    f"(95% bootstrap [{judged['bootstrap'][0]:.3f}, {judged['bootstrap'][1]:.3f}])")  # fmt: skip
        if not report["wins"]:
            return self.record(state, "gate_failed", f"{gate} <= {cfg.min_win_rate}: not deployed", numbers)
        gate = gate if report.get("gate_skipped") else f"{gate} > {cfg.min_win_rate}"
        name = f"{cfg.candidate_prefix}-{generation}"
        try:
            self.fleet.ensure(name, str(Path(report["model_dir"]).resolve()))
        except ConnectionError as e:
            return self.record(state, "retrain_failed", f"{gate}; deploying {name} failed: {e}", numbers)
        share = float(cfg.stages[0])
        event = self.record(state, "deployed", f"{gate}: {name} serves {share:.0%}", numbers, name, share)
        self.fleet.set_weights(self.state())
        return event

    def _stage(self, state: RolloutState, now: float) -> dict | None:
        from alignkit.serve.stats import summarize

        since = state.stage_started
        summary = summarize(self.store.responses(since=since), self.store.feedback(since=since),
                            baseline=state.champion, margin=self.cfg.margin, min_n=self.cfg.min_n,
                            alpha=self.cfg.alpha, monitor=dict(self.cfg.monitor))  # fmt: skip
        if state.candidate not in {v["variant"] for v in summary["variants"]}:
            summary["decisions"] = []
        decision = stage_decision(state, summary, self.cfg.rules(), now)
        if decision["action"] == "held":
            last = self.store.rollout_events(self.cfg.name, last=1)
            if last and last[0]["action"] == "held" and _hold_kind(last[0]) == _hold_kind(decision):
                if now - last[0]["created"] < self.cfg.record_hold_every_s:
                    return None  # nothing new to say yet
        event = self.record(state, decision["action"], decision["reason"], decision["numbers"], share=decision["share"])
        if decision["action"] != "held":
            self.fleet.set_weights(self.state())
        return event

    def withdraw(self, reason: str) -> dict | None:
        """End a running stage without a verdict (the candidate to 0%, the champion to 100%)."""
        state = self.state()
        if state.phase != "staged":
            return None
        event = self.record(state, "withdrawn", reason, {"stage": state.stage}, share=0.0)
        self.fleet.set_weights(self.state())
        return event

    def run(self, stop=lambda: False) -> None:
        """``resume``, then ``tick`` every ``check_every_s`` until ``stop()`` or ``max_generations`` is reached and
        no rollout is running. A server that is briefly away is retried at the next tick."""
        while True:
            try:
                self.resume()
                break
            except ConnectionError as e:
                log.warning("servers not reachable yet (%s); retrying in %.0fs", e, self.cfg.check_every_s)
                time.sleep(self.cfg.check_every_s)
        while not stop():
            try:
                self.tick()
            except ConnectionError as e:
                log.warning("a server did not answer (%s); the next look retries", e)
            except Exception:  # noqa: BLE001 - a long-running loop logs and looks again (the store holds its state)
                log.exception("the loop's look at the store failed; the next look retries")
            state = self.state()
            done = self.cfg.max_generations and state.generation >= self.cfg.max_generations
            if done and state.phase == "idle":
                log.info("%d generations done; the loop stops", state.generation)
                return
            time.sleep(self.cfg.check_every_s)


def _hold_kind(event: dict) -> tuple:
    """What a hold is waiting for: the A/B decision's reason (too_few, not_significant, ...) and the stage."""
    numbers = event.get("numbers") or {}
    return numbers.get("stage"), ((numbers.get("decision") or {}).get("reason"))


def check_ready(cfg: LoopConfig) -> None:
    """Before anything runs: the store opens, the judge spec and training config exist."""
    if "://" not in cfg.db and not Path(cfg.db).exists():
        raise UserError(f"loop config: db {cfg.db} does not exist. Fix: give the store `alignkit serve` writes to")
    if cfg.train_config and not Path(cfg.train_config).is_file():
        raise UserError(f"loop config: train_config {cfg.train_config} does not exist. Fix: e.g. "
                        "configs/retrain_kto.yaml")  # fmt: skip
