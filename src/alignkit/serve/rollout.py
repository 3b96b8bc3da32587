"""The staged rollout that ``alignkit loop`` runs, as pure functions over the store's rollout events and traffic.

    idle --enough new feedback--> training --gate passed--> staged at 5% --promote--> 10% -> 25% -> 50% -> 100%
                                                                          (100%: promoted, the new champion)
                                   |  gate failed / crashed: idle        | keep collecting: hold the stage
                                                                         | worse, or a detector alarms: rolled back

Every transition is a row of the store's ``rollout_events`` (action, champion, candidate, share, reason, numbers):
``replay`` rebuilds the state from those rows, so a restarted loop resumes where it was. ``stage_decision`` judges
the running stage on the traffic since the stage began (each stage needs its own evidence): the A/B decision of
``stats.ab_decision`` (Newcombe interval of the thumbs-up difference) and the failure detectors of the candidate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ACTIONS = (
    "retrain_started", "retrain_failed", "gate_failed", "deployed", "held", "advanced", "promoted", "rolled_back",
    "withdrawn",  # the candidate leaves without a verdict (its experiment was stopped)
)  # fmt: skip
STAGES = (0.05, 0.10, 0.25, 0.50)  # the candidate's shares; passing the last one promotes it to 100%


@dataclass
class RolloutState:
    """Where a loop stands. ``phase``: idle | training | staged; ``stage``: index into the stages while staged;
    ``watermark``: the newest feedback time the last finished retrain used (a failed retrain's feedback counts
    again for the next); ``sources``: variant -> model directory."""

    champion: str
    phase: str = "idle"
    candidate: str | None = None
    stage: int = -1
    share: float = 0.0
    stage_started: float | None = None
    watermark: float = 0.0
    last_retrain: float | None = None
    generation: int = 0
    sources: dict = field(default_factory=dict)
    train_data: str | None = None  # the last training set (mixed into the next one)


def replay(events: list[dict], champion: str, champion_source: str | None = None) -> RolloutState:
    """The state after ``events`` (one loop's, oldest first), starting from ``champion`` serving everything."""
    state = RolloutState(champion=champion, sources={champion: champion_source})
    used = 0.0  # the watermark of the last retrain that finished (a failed one leaves its feedback to the next)
    for e in events:
        n, action = e.get("numbers") or {}, e["action"]
        if action == "retrain_started":
            state.phase, state.watermark, state.last_retrain = "training", n.get("watermark", 0.0), e["created"]
            state.generation = max(state.generation, n.get("generation", state.generation + 1))
        elif action == "retrain_failed":
            state.phase, state.watermark = "idle", used
        elif action == "gate_failed":
            state.phase, used = "idle", state.watermark
            state.train_data = n.get("train_data") or state.train_data
        elif action == "deployed":
            used = state.watermark
            state.phase, state.candidate, state.stage, state.share = "staged", e["candidate"], 0, e["share"]
            state.stage_started = e["created"]
            state.sources[e["candidate"]] = n.get("source")
            state.train_data = n.get("train_data") or state.train_data
        elif action == "advanced":
            state.stage, state.share, state.stage_started = n["stage"], e["share"], e["created"]
        elif action == "promoted":
            state.champion, state.candidate, state.phase, state.stage, state.share = e["candidate"], None, "idle", -1, 0
        elif action in ("rolled_back", "withdrawn"):
            state.candidate, state.phase, state.stage, state.share = None, "idle", -1, 0.0
    return state


def weights_for(state: RolloutState, variants: list[str]) -> dict[str, float]:
    """The A/B weights of ``state``: the candidate at its share, the champion the rest, every other variant 0."""
    weights = dict.fromkeys(variants, 0.0)
    weights[state.champion] = 1.0 - (state.share if state.candidate else 0.0)
    if state.candidate:
        weights[state.candidate] = state.share
    return weights


@dataclass
class StageRules:
    """When a stage moves: ``margin`` / ``min_n`` / ``alpha`` of the A/B decision (ratings per variant within the
    stage), ``min_stage_seconds`` the least time at a stage, ``detectors`` whose alarm on the candidate rolls back."""

    stages: tuple[float, ...] = STAGES
    margin: float = 0.05
    min_n: int = 100
    alpha: float = 0.05
    min_stage_seconds: float = 0.0
    detectors: tuple[str, ...] = ("length_explosion", "repetition", "safety_spike")


def stage_decision(state: RolloutState, summary: dict, rules: StageRules, now: float | None = None) -> dict:
    """The next event of a staged rollout from ``summary`` (``stats.summarize`` over the stage's traffic, baseline
    the champion): {"action": held | advanced | promoted | rolled_back, "share", "reason", "numbers"}."""
    now = time.time() if now is None else now
    decision = next((d for d in summary.get("decisions", []) if d["candidate"] == state.candidate), None)
    monitor = (summary.get("monitor") or {}).get("variants", {}).get(state.candidate, {})
    alarms = {k: v for k, v in monitor.items() if k in rules.detectors and v.get("alarm")}
    numbers = {"stage": state.stage, "decision": decision, "alarms": alarms,
               "stage_seconds": now - (state.stage_started or now)}  # fmt: skip
    if alarms:
        reason = "; ".join(f"{k}: {v.get('reason', 'alarm')}" for k, v in alarms.items())
        return {"action": "rolled_back", "share": 0.0, "reason": f"detector alarm on {state.candidate}: {reason}",
                "numbers": numbers}  # fmt: skip
    if decision is None:
        return {"action": "held", "share": state.share, "numbers": numbers,
                "reason": f"keep collecting: no rated traffic for {state.candidate} in this stage yet"}  # fmt: skip
    if decision["action"] == "roll_back":
        return {"action": "rolled_back", "share": 0.0, "reason": decision["sentence"], "numbers": numbers}
    if decision["action"] == "promote" and numbers["stage_seconds"] >= rules.min_stage_seconds:
        last = state.stage + 1 >= len(rules.stages)
        if last:
            return {"action": "promoted", "share": 1.0, "reason": decision["sentence"], "numbers": numbers}
        numbers["stage"] = state.stage + 1
        share = rules.stages[state.stage + 1]
        reason = f"{decision['sentence']}; next stage {state.stage + 2}/{len(rules.stages)}: {share:.0%}"
        return {"action": "advanced", "share": share, "numbers": numbers, "reason": reason}
    if decision["action"] == "promote":
        wait = rules.min_stage_seconds - numbers["stage_seconds"]
        return {"action": "held", "share": state.share, "numbers": numbers,
                "reason": f"{decision['sentence']}; the stage lasts at least {wait:.0f}s more"}  # fmt: skip
    return {"action": "held", "share": state.share, "reason": decision["sentence"], "numbers": numbers}
