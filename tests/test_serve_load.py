"""Nothing acknowledged is lost under load: 5,000 feedback posts from 50 concurrent clients on loopback against a
real server process; the store then holds every acknowledged post exactly once (no timing assertions)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import openai
from serve_helpers import serve_process

from alignkit.serve.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the load generator is bench code
from loadgen import feedback_load  # noqa: E402


def test_every_acknowledged_feedback_post_is_stored_once(tiny_model_dir, tmp_path):
    db = tmp_path / "load.sqlite"
    with serve_process(["--model", tiny_model_dir, "--db", str(db)], tmp_path / "serve.log") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        ids = [
            client.chat.completions.create(
                model="default", max_tokens=2, messages=[{"role": "user", "content": f"q{i}"}]
            ).id
            for i in range(5)
        ]
        result = feedback_load(url, ids, total=2000, clients=50)
        paced = feedback_load(url, ids, total=200, clients=20, rate=400.0)  # open loop: post i due at i / 400 s
    assert len(paced.acked) == 200, paced.errors
    assert paced.seconds >= 199 / 400  # paced, not as fast as possible (a lower bound, not a speed claim)
    assert len(result.acked) + sum(result.errors.values()) == 2000
    assert len(result.acked) >= 1960, result.errors  # loopback: essentially nothing may fail
    with Store(db) as store:
        stored = Counter(f["id"] for f in store.feedback() if f["id"].startswith("load-"))
    assert all(stored[fid] == 1 for fid in result.acked + paced.acked)
    assert set(stored) >= set(result.acked + paced.acked)
