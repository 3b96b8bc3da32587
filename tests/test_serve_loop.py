"""The whole loop on a tiny model, with real processes: serve -> chat -> thumbs -> export -> KTO for 2 steps ->
judged against the serving model -> the new adapter served as a second variant -> traffic split by user hash."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx2 as httpx
import openai
from scipy.stats import binomtest
from serve_helpers import serve_process

from alignkit.serve.store import Store


def _retrain(url, db, out, base, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "alignkit", "retrain", "--db", str(db), "--out", str(out), "--base", base,
           "--judge", "verifier:math", "--eval-prompts", "builtin:arithmetic_heldout.jsonl", "--limit", "4",
           "--max-new-tokens", "8", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
           "--set", "train.logging_steps=1", "--server", url, "--name", "v2", "--weight", "0.5", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_serve_feedback_retrain_and_split(tiny_model_dir, tmp_path):
    db = tmp_path / "loop.sqlite"
    with serve_process(["--variant", f"base={tiny_model_dir}", "--db", str(db)], tmp_path / "serve.log") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for u in range(12):  # 12 users, 2 answers each, one up and one down: no rater is dropped as biased
            for k, value in enumerate(("up", "down")):
                r = client.chat.completions.create(
                    model="auto", user=f"user{u}", max_tokens=16, temperature=1.0, seed=u * 10 + k,
                    messages=[{"role": "user", "content": f"Tell me something about topic {u}-{k}."}],
                )  # fmt: skip
                fb = httpx.post(f"{url}/v1/feedback", json={"response_id": r.id, "value": value, "user": f"user{u}"})
                assert fb.status_code == 201

        # a retrained model that must win by an impossible margin is not deployed
        refused = _retrain(url, db, tmp_path / "r0", tiny_model_dir, "--min-win-rate", "0.99")
        assert refused.returncode == 0, refused.stderr[-3000:]
        assert "not deployed" in refused.stdout
        assert [m.id for m in client.models.list().data] == ["base"]

        # with a threshold it passes (the tiny models tie on arithmetic: win rate 0.5 > 0), it is added at 50%
        done = _retrain(url, db, tmp_path / "r1", tiny_model_dir, "--min-win-rate", "0")
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((tmp_path / "r1" / "retrain_report.json").read_text())
        assert report["export"]["written"] == 24 and report["mix"]["fresh"] == 24
        assert report["judged"]["n"] == 4 and report["deployed"]["weights"] == {"base": 0.5, "v2": 0.5}
        assert (tmp_path / "r1" / "fresh.jsonl").read_text().count('"label"') == 24
        assert sorted(m.id for m in client.models.list().data) == ["base", "v2"]

        # traffic now splits by user hash, stickily
        seen = {}
        for u in range(120):
            r = client.chat.completions.create(
                model="auto", user=f"split{u}", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
            )
            seen[u] = r.model
        hits = sum(v == "v2" for v in seen.values())
        assert binomtest(hits, len(seen), 0.5).pvalue > 0.001, hits
        again = client.chat.completions.create(
            model="auto", user="split7", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
        assert again.model == seen[7]

    with Store(db) as store:
        history = store.weight_history()
        assert history[-1]["weights"] == {"base": 0.5, "v2": 0.5} and "v2" in history[-1]["actor"]
        assert store.counts()["feedback"] == 24
