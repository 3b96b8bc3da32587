"""The loop demo (``alignkit demo --method loop``): the whole continual-alignment loop on the embedded model.

    alignkit serve (a real process, the embedded model as "base")  <-- simulated users chat and rate (HTTP)
    alignkit loop (in this process): enough new ratings -> KTO on the thumbs -> offline gate (math verifier on
        held-out problems) -> deployed at 50% -> promoted or rolled back on the stage's own A/B decision
    then a deliberately bad candidate (the champion with its weights scrambled), deployed past the gate on purpose,
        which the loop must roll back
    -> report: thumbs-up rate per variant over time with 95% Wilson intervals, traffic shares, every decision, and
       the held-out accuracy of the serving model at the end against the original (greedy, McNemar's test)

The users are ``simulated_users``' documented policy (seeded): they ask the project's multiplication word problems
(the category the 135M model gets right most often, ~45% greedy, so a thumb says something), rate with the math
verifier against the gold answers, and the gate judges the held-out multiplication problems the same way: no
judge learned from our training data. One 50% stage instead of 5/10/25/50 fits the demo in ~15 minutes on 2 cores
(configs/loop.yaml has the production stages).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from alignkit.data.readers import builtin_path, read_records
from alignkit.outputs import own_output_dir
from alignkit.recipes.loop import Loop, LoopConfig, gate_and_train
from alignkit.recipes.simulated_users import SimulatedUsers, UserPolicy

HELDOUT = "builtin:arithmetic_heldout.jsonl"
CATEGORY = "mul"  # what the simulated users ask


def scrambled_candidate(cfg: LoopConfig, state, out: Path) -> dict:
    """A deliberately bad candidate: the champion's weights with Gaussian noise (each tensor's own spread) added,
    deployed without a gate on purpose, so the demo shows a rollback."""
    import torch

    from alignkit.models import load_model, load_tokenizer
    from alignkit.models.save import save_model

    source = state.sources.get(state.champion)
    model, tok = load_model(source, torch.float32, torch.device("cpu")), load_tokenizer(source)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std())  # its answers become word salad
    save_model(model, tok, out / "model")
    why = "a deliberately bad candidate (the champion's weights scrambled), deployed past the gate on purpose"
    return {"model_dir": str(out / "model"), "wins": True, "gate_skipped": why, "judged": {}}


def run_loop_demo(output_dir: str = "runs/demo-loop", overrides: list[str] = (), log=print,
                  quick: bool = False, overwrite: bool = False) -> dict:  # fmt: skip
    """Run the demo; returns the summary written to ``summary.json`` (the report is ``report.md``/``.html``).
    ``quick``: a smaller run for tests (fewer ratings, a shorter gate and evaluation)."""
    from alignkit.serve.store import Store

    t0 = time.time()
    out = Path(output_dir)
    own_output_dir(out, "demo loop", overwrite=overwrite)
    for stale in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
        (out / stale).unlink(missing_ok=True)

    def step(n: int, text: str) -> None:
        log(f"[{n}/6 {time.time() - t0:4.0f}s] {text}")

    step(1, "starting `alignkit serve` with the embedded model as 'base'")
    import signal

    from alignkit.serve.process import serve_process

    if threading.current_thread() is threading.main_thread():  # a SIGTERM stops the demo's server too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    args = ["--variant", "base=smollm2-135m-instruct", "--db", str(out / "store.sqlite"), "--max-tokens", "128",
            "--max-batch-size", "16"]  # fmt: skip
    served = serve_process(args, out / "server.log", timeout=300)
    url = served.__enter__()  # left in the finally below
    log(f"      server {url} (log {out / 'server.log'})")
    problems = [r for _, r in read_records("builtin:arithmetic_train.jsonl") if r.get("category") == CATEGORY]
    from alignkit.data.jsonl import write_jsonl

    gate_problems = [r for _, r in read_records(HELDOUT) if r.get("category") == CATEGORY]
    write_jsonl(out / f"heldout_{CATEGORY}.jsonl", gate_problems)
    users = SimulatedUsers(url, problems, UserPolicy(seed=0, temperature=0.3, yes_men=0.05))
    cfg = demo_config(out, url, quick, overrides)
    summary: dict = {}
    try:
        with Store(str(out / "store.sqlite")) as store:
            pool = users.start()
            step(2, f"{users.policy.users} simulated users chat and rate ({users.policy.clients} at a time); the "
                 f"loop retrains after {cfg.min_new_feedback} ratings")  # fmt: skip

            def train(c, state, gen_out):
                users.paused.set()  # two cores: the users wait while the loop trains and gates
                try:
                    return gate_and_train(c, state, gen_out)
                finally:
                    users.paused.clear()

            first = run_until_settled(Loop(cfg, store, train=train), budget=420 if quick else 720, log=log)
            step(3, f"generation 1: {first['action']}: {first['reason']}")
            step(4, "a deliberately bad candidate (scrambled weights) goes out past the gate")
            bad_cfg = demo_config(out, url, quick, overrides, bad=True)
            second = run_until_settled(Loop(bad_cfg, store, train=scrambled_candidate), budget=300, log=log)
            step(4, f"generation 2: {second['action']}: {second['reason']}")
            users.stop.set()
            pool.shutdown(wait=True)
            events, responses, feedback = store.rollout_events(cfg.name), store.responses(), store.feedback()
            champion = Loop(cfg, store).state()
        step(5, "held-out accuracy of the serving model against the original (greedy)")
        from alignkit.recipes.demo_loop_report import heldout_change, write_loop_report

        accuracy = heldout_change(champion.sources.get(champion.champion), limit=100 if quick else 300)
        step(6, "writing the report")
        summary = write_loop_report(out, events, responses, feedback, users, accuracy, champion, time.time() - t0)
    finally:
        users.stop.set()
        served.__exit__(None, None, None)
    log(f"report: {out / 'report.md'} (total {time.time() - t0:.0f}s)")
    return summary


def demo_config(out: Path, url: str, quick: bool, overrides: list[str], bad: bool = False) -> LoopConfig:
    """The demo's loop: KTO on the thumbs, gated by the math verifier, one 50% stage, decisions on 60 ratings each."""
    from alignkit.config.base import load_config

    base = {
        "db": str(out / "store.sqlite"), "servers": [url], "champion": "base", "out": str(out / "loop"),
        "method": "kto", "train_config": str(builtin_path("demo_loop_kto.yaml")), "judge": "verifier:math",
        "eval_prompts": str(out / f"heldout_{CATEGORY}.jsonl"), "gate_limit": 60, "gate_max_new_tokens": 64,
        "min_new_feedback": 120 if quick else 200, "stages": [0.5], "margin": 0.0, "min_n": 40,
        "check_every_s": 2.0, "record_hold_every_s": 30.0, "max_generations": 1,
        "monitor": {"window": 40, "baseline": 200, "min_samples": 20},
    }  # fmt: skip
    if bad:
        base |= {"min_new_feedback": 20, "max_generations": 2, "min_n": 30}
    return load_config(LoopConfig, None, list(overrides), base=base)


def run_until_settled(loop: Loop, budget: float, log) -> dict:
    """Run ``loop`` until its newest generation is promoted, rolled back or failed, or ``budget`` seconds passed
    (then it stops where it is: the last event says where) -> the last event."""
    deadline = time.monotonic() + budget
    start = len(loop.store.rollout_events(loop.cfg.name))

    def stop() -> bool:
        events = loop.store.rollout_events(loop.cfg.name)[start:]
        settled = any(e["action"] in ("promoted", "rolled_back", "gate_failed", "retrain_failed") for e in events)
        return settled or time.monotonic() > deadline

    loop.run(stop=stop)
    events = loop.store.rollout_events(loop.cfg.name)
    last = events[-1] if len(events) > start else {"action": "none", "reason": "no retrain within the time budget"}
    if loop.state().phase == "staged":  # the budget ran out before the stage decided
        last = loop.withdraw(f"the demo's {budget:.0f}s budget for this candidate ran out before its stage decided "
                             f"(last: {last['reason']}); it goes back to 0% without a verdict")  # fmt: skip
    log(f"      {json.dumps({k: last.get(k) for k in ('action', 'candidate', 'share')})}")
    return last
