"""Two `alignkit serve` processes on one PostgreSQL store behave as one service behind a round-robin balancer: the
same A/B assignment for a user on either, feedback on either about answers from either, weights changed on one
followed by the other, and every acknowledged row stored exactly once (real processes, a real PostgreSQL)."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import pytest
from pg_server import postgres_server, postgres_url  # noqa: F401 (fixtures)
from serve_helpers import serve_process

from alignkit.serve.export import export_feedback
from alignkit.serve.stats import summarize
from alignkit.serve.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the load generator is bench code
from loadgen import feedback_load  # noqa: E402


@pytest.fixture
def replicas(tiny_model_dir, postgres_url, tmp_path):  # noqa: F811 (a fixture)
    args = ["--variant", f"base={tiny_model_dir}", "--variant", f"new={tiny_model_dir}", "--weights",
            "base=0.5,new=0.5", "--db", postgres_url, "--max-tokens", "32"]  # fmt: skip
    with serve_process(args, tmp_path / "a.log") as a, serve_process(args, tmp_path / "b.log") as b:
        yield [a, b], postgres_url


def test_two_replicas_on_one_postgres_store_act_as_one_service(replicas, tmp_path):
    urls, db = replicas
    balancer = itertools.cycle(urls)  # round robin, as the simplest load balancer

    def chat(user: str | None, url: str | None = None) -> httpx.Response:
        body = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        if user:
            body["user"] = user
        return httpx.post(f"{url or next(balancer)}/v1/chat/completions", json=body, timeout=60)

    users = [f"user-{i}" for i in range(10)]
    on_a = {u: chat(u, urls[0]).headers["x-alignkit-variant"] for u in users}
    on_b = {u: chat(u, urls[1]).headers["x-alignkit-variant"] for u in users}
    assert on_a == on_b and set(on_a.values()) == {"base", "new"}  # the same sticky assignment on both

    answers = [chat(u) for u in users for _ in range(2)]  # round robin
    rated = []
    for i, r in enumerate(answers):  # rated through the other replica than the one that answered (usually)
        body = {"response_id": r.json()["id"], "value": "up" if i % 3 else "down", "user": users[i // 2],
                "feedback_id": f"fb-replica-{i}"}  # fmt: skip
        got = httpx.post(f"{next(balancer)}/v1/feedback", json=body)
        assert got.status_code == 201, got.text
        rated.append(body["feedback_id"])

    # weights changed on A reach B (it re-reads the store every 2 s)
    put = httpx.put(f"{urls[0]}/admin/weights", json={"weights": {"base": 0.0, "new": 1.0}})
    assert put.status_code == 200
    deadline = time.monotonic() + 15
    while httpx.get(f"{urls[1]}/admin/weights").json()["weights"] != {"base": 0.0, "new": 1.0}:
        assert time.monotonic() < deadline, "replica B never followed the weights change"
        time.sleep(0.2)
    assert {chat(u, urls[1]).headers["x-alignkit-variant"] for u in users} == {"new"}
    gauge = [x for x in httpx.get(f"{urls[1]}/metrics").text.splitlines() if x.startswith("alignkit_variant_weight")]
    assert 'alignkit_variant_weight{variant="new"} 1.0' in gauge

    # concurrent feedback load through both replicas: every acknowledged post stored once, none lost
    ids = [chat(None).json()["id"] for _ in range(4)]  # answers for nobody: any rater may rate them
    with cf.ThreadPoolExecutor(2) as pool:
        loads = list(pool.map(lambda url: feedback_load(url, ids, total=200, clients=10), urls))
    acked = [fid for load in loads for fid in load.acked]
    assert len(acked) == 400 and not any(load.errors for load in loads)

    with Store(db) as store:
        stored = Counter(f["id"] for f in store.feedback())
        assert all(stored[fid] == 1 for fid in acked + rated) and sum(stored.values()) == len(acked) + len(rated)
        responses = store.responses()
        assert len({r["id"] for r in responses}) == len(responses) == 3 * len(users) + len(answers) + len(ids)
        summary = summarize(responses, store.feedback(), baseline="base", min_n=1)
        assert summary["counts"]["feedback"] == 400 + len(rated)
        report = export_feedback(store, "kto", tmp_path / "kto.jsonl")
    assert report.read["ratings"] == 400 + len(rated)
