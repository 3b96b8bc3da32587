"""`alignkit serve` as a real process on 127.0.0.1, driven with the official `openai` client (as vLLM and
llama.cpp test theirs) and raw HTTP for what the client hides: chat (plain, n, stop, seed, usage, streaming),
models, feedback (idempotent), compare + vote, A/B weights at runtime, metrics, OpenAI-shaped errors, limits,
and an upstream variant proxied to a second alignkit server."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re

import httpx2 as httpx
import openai
import pytest
from serve_helpers import serve_process

from alignkit.serve.store import Store


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    db = tmp / "store.sqlite"
    args = ["--variant", f"base={tiny_model_dir}", "--variant", f"new={tiny_model_dir}",
            "--weights", "base=0.5,new=0.5", "--db", str(db), "--max-tokens", "64", "--max-body-kb", "64",
            "--max-concurrency", "2"]  # fmt: skip
    with serve_process(args, tmp / "server.log") as url:
        yield {"url": url, "db": db, "log": tmp / "server.log"}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)


def ask(client, text="Hello!", **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("model", "auto")
    return client.chat.completions.create(messages=[{"role": "user", "content": text}], **kw)


def test_chat_completion_shape_usage_and_store(client, server):
    r = ask(client, user="alice", max_tokens=6, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model in ("base", "new")
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    s = Store(server["db"])
    try:
        row = s.get_response(r.id)
    finally:
        s.close()
    assert row["content"] == r.choices[0].message.content and row["variant"] == r.model
    assert row["user_hash"] and "alice" not in row["user_hash"]
    assert row["messages"] == [{"role": "user", "content": "Hello!"}]


def test_length_n_seed_and_stop(client):
    r = ask(client, max_tokens=5, temperature=0, model="base")
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    r2 = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Hi"}], n=3, max_tokens=6, temperature=1.0, seed=7
    )
    assert [c.index for c in r2.choices] == [0, 1, 2]
    ids = [c.model_extra["response_id"] for c in r2.choices]
    assert ids == [r2.id, f"{r2.id}-1", f"{r2.id}-2"]
    again = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Hi"}], n=3, max_tokens=6, temperature=1.0, seed=7
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in r2.choices]
    # a stop string: the text ends before it (take a word the tiny model just produced as the stop string)
    text = ask(client, max_tokens=12, temperature=0, model="base").choices[0].message.content
    word = next((w for w in text.split() if len(w) >= 2), None)
    if word:
        stopped = ask(client, max_tokens=12, temperature=0, model="base", stop=[word])
        assert word not in stopped.choices[0].message.content
        assert stopped.choices[0].finish_reason == "stop"


def test_streaming_matches_plain_and_ends_with_done(client, server):
    kw = dict(model="base", max_tokens=10, temperature=0)
    plain = ask(client, **kw).choices[0].message.content
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    raw = httpx.post(f"{server['url']}/v1/chat/completions", json={**kw, "stream": True,
                     "messages": [{"role": "user", "content": "Hello!"}]}, timeout=60)  # fmt: skip
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in raw.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    rid = json.loads(events[0])["id"]
    finish = [
        json.loads(e) for e in events[:-1] if json.loads(e)["choices"] and json.loads(e)["choices"][0]["finish_reason"]
    ]
    assert finish[0]["choices"][0]["response_id"] == rid


def test_models_health_and_metrics(client, server):
    assert sorted(m.id for m in client.models.list().data) == ["base", "new"]
    h = httpx.get(f"{server['url']}/health").json()
    assert h == {"status": "ok", "variants": {"base": "ready", "new": "ready"}}
    ask(client, user="metrics-user")
    text = httpx.get(f"{server['url']}/metrics").text
    for name in ("alignkit_requests_total", "alignkit_request_duration_seconds_bucket",
                 "alignkit_time_to_first_token_seconds_bucket", "alignkit_prompt_tokens_total",
                 "alignkit_generated_tokens_total", "alignkit_requests_in_flight", "alignkit_detector_alarm",
                 "alignkit_variant_weight"):  # fmt: skip
        assert name in text, name
    assert 'route="/v1/chat/completions",status="200"' in text
    assert "metrics-user" not in text and "user" not in re.findall(r"\{([^}]*)\}", text).__str__()


def test_feedback_is_idempotent_and_404_for_unknown(client, server):
    r = ask(client, user="bob")
    body = {"response_id": r.id, "value": "up", "feedback_id": "fb-retry-1", "comment": "nice", "user": "bob"}
    first = httpx.post(f"{server['url']}/v1/feedback", json=body)
    retry = httpx.post(f"{server['url']}/v1/feedback", json=body)
    assert first.status_code == 201 and first.json()["stored"] is True
    assert retry.status_code == 200 and retry.json()["stored"] is False and retry.json()["id"] == "fb-retry-1"
    missing = httpx.post(f"{server['url']}/v1/feedback", json={"response_id": "chatcmpl-nope", "value": "up"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    bad = httpx.post(f"{server['url']}/v1/feedback", json={"response_id": r.id, "value": "meh", "user": "bob"})
    assert bad.status_code == 422 and "value" in bad.json()["error"]["message"]
    s = Store(server["db"])
    try:
        rows = [f for f in s.feedback() if f["response_id"] == r.id]
    finally:
        s.close()
    assert len(rows) == 1 and rows[0]["snapshot"]["content"] == r.choices[0].message.content


def test_compare_is_anonymous_and_vote_maps_to_the_shown_side(server):
    url = server["url"]
    c = httpx.post(f"{url}/v1/compare", json={"messages": [{"role": "user", "content": "Pick"}], "max_tokens": 6},
                   timeout=60).json()  # fmt: skip
    assert set(c) == {"id", "object", "left", "right"} and "variant" not in json.dumps(c)
    v = httpx.post(f"{url}/v1/compare/{c['id']}/vote", json={"vote": "left", "vote_id": "v1"})
    assert v.status_code == 201 and v.json()["stored"] is True
    assert httpx.post(f"{url}/v1/compare/{c['id']}/vote", json={"vote": "left", "vote_id": "v1"}).status_code == 200
    assert httpx.post(f"{url}/v1/compare/cmp-nope/vote", json={"vote": "tie"}).status_code == 404
    s = Store(server["db"])
    try:
        row = s.get_comparison(c["id"])
        left = s.get_response(row["response_a"] if row["a_shown"] == "left" else row["response_b"])
    finally:
        s.close()
    assert row["vote"] == ("a" if row["a_shown"] == "left" else "b")
    assert left["content"] == c["left"]["content"] and {row["variant_a"], row["variant_b"]} == {"base", "new"}


def test_weights_change_at_runtime_and_are_recorded(client, server):
    url = server["url"]
    assert httpx.put(f"{url}/admin/weights", json={"weights": {"base": 0, "new": 1}}).status_code == 200
    assert {ask(client, user=f"w{i}", max_tokens=2).model for i in range(8)} == {"new"}
    bad = httpx.put(f"{url}/admin/weights", json={"weights": {"base": -1}})
    assert bad.status_code == 400 and ">= 0" in bad.json()["error"]["message"]
    assert httpx.put(f"{url}/admin/weights", json={"weights": {"ghost": 1}}).status_code == 400
    got = httpx.put(f"{url}/admin/weights", json={"weights": {"base": 0.5, "new": 0.5}}).json()
    assert got["weights"] == {"base": 0.5, "new": 0.5}
    history = httpx.get(f"{url}/admin/weights").json()["history"]
    assert [h["weights"] for h in history[-2:]] == [{"base": 0.0, "new": 1.0}, {"base": 0.5, "new": 0.5}]
    # sticky: the same user keeps the same variant across requests
    assert len({ask(client, user="sticky", max_tokens=2).model for _ in range(4)}) == 1


def test_openai_shaped_errors(client, server):
    url = server["url"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
    assert "not served" in e.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError):
        ask(client, temperature=9)
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        ask(client, max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="context"):
        ask(client, text="word " * 600, max_tokens=64)
    big = httpx.post(f"{url}/v1/chat/completions", content=b'{"messages": "' + b"x" * 70_000 + b'"}',
                     headers={"content-type": "application/json"})  # fmt: skip
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    form = httpx.post(f"{url}/v1/feedback", content=b"value=up", headers={"content-type": "text/plain"})
    assert form.status_code == 415
    broken = httpx.post(f"{url}/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "Traceback" not in broken.text
    assert httpx.get(f"{url}/nope").json()["error"]["message"] == "no such route"


def test_concurrency_limit_answers_429(server):
    def one(i):
        body = {"model": "base", "messages": [{"role": "user", "content": f"count {i}"}], "max_tokens": 64,
                "temperature": 1.0}  # fmt: skip
        return httpx.post(f"{server['url']}/v1/chat/completions", json=body, timeout=120).status_code

    with cf.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(one, range(12)))
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
    assert "alignkit_rejected_requests_total" in httpx.get(f"{server['url']}/metrics").text


def test_upstream_variant_proxies_chat_and_stream(tiny_model_dir, tmp_path, server):
    args = ["--variant", f"remote={server['url']}/v1#base", "--db", str(tmp_path / "proxy.sqlite")]
    with serve_process(args, tmp_path / "proxy.log") as url:
        proxy = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        direct = openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)
        kw = dict(max_tokens=8, temperature=0)
        via = proxy.chat.completions.create(model="remote", messages=[{"role": "user", "content": "Hi"}], **kw)
        mine = direct.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi"}], **kw)
        assert via.choices[0].message.content == mine.choices[0].message.content and via.model == "remote"
        streamed = proxy.chat.completions.create(
            model="remote", messages=[{"role": "user", "content": "Hi"}], stream=True, **kw
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == via.choices[0].message.content
        )
        fb = httpx.post(f"{url}/v1/feedback", json={"response_id": via.id, "value": "down"})
        assert fb.status_code == 201  # feedback is kept in front of the upstream


def test_unreachable_upstream_keeps_health_503(tmp_path):
    import subprocess
    import sys
    import time

    from serve_helpers import free_port

    port, dead = free_port(), free_port()
    cmd = [sys.executable, "-m", "alignkit", "serve", "--variant", f"x=http://127.0.0.1:{dead}/v1",
           "--db", str(tmp_path / "s.sqlite"), "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                h = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if h.json()["variants"]["x"] == "failed":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert h.status_code == 503 and h.json()["status"] == "loading"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": [{"role": "user",
                       "content": "hi"}]})  # fmt: skip
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
    finally:
        proc.kill()
        proc.wait()


def test_api_keys_by_scope(tiny_model_dir, tmp_path):
    args = ["--model", tiny_model_dir, "--db", str(tmp_path / "keys.sqlite"), "--admin-key", "adm",
            "--chat-key", "chat1", "--feedback-key", "fb1"]  # fmt: skip
    with serve_process(args, tmp_path / "keys.log") as url:
        msgs = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
                model="default", messages=msgs, max_tokens=2
            )
        r = openai.OpenAI(base_url=url + "/v1", api_key="chat1", max_retries=0).chat.completions.create(
            model="default", messages=msgs, max_tokens=2
        )
        body = {"response_id": r.id, "value": "up"}
        assert httpx.post(f"{url}/v1/feedback", json=body).status_code == 401  # no key at all
        denied = httpx.post(f"{url}/v1/feedback", json=body, headers={"authorization": "Bearer chat1"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_scope"
        assert httpx.post(f"{url}/v1/feedback", json=body, headers={"authorization": "Bearer fb1"}).status_code == 201
        weights = {"weights": {"default": 1}}
        assert (
            httpx.put(f"{url}/admin/weights", json=weights, headers={"authorization": "Bearer fb1"}).status_code == 403
        )
        assert (
            httpx.put(f"{url}/admin/weights", json=weights, headers={"authorization": "Bearer adm"}).status_code == 200
        )
        assert httpx.get(f"{url}/health").status_code == 200  # health and metrics stay open for probes


def test_serve_refuses_a_public_bind_without_keys_and_bad_options():
    from typer.testing import CliRunner

    from alignkit.cli.main import app
    from alignkit.cli.serve import parse_variants, parse_weights

    runner = CliRunner()
    out = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert out.exit_code != 0 and "admin key" in str(out.exception)
    with pytest.raises(Exception, match="NAME=SOURCE"):
        parse_variants(None, ["oops"])
    with pytest.raises(Exception, match="names repeat"):
        parse_variants("m", ["default=x"])
    with pytest.raises(Exception, match="NAME=NUMBER"):
        parse_weights("a=lots")
    assert parse_variants(None, []) == [("default", None)]
    assert parse_variants(None, ["a=x", "b=http://h:1/v1"]) == [("a", "x"), ("b", "http://h:1/v1")]


def test_adding_a_variant_with_a_bad_source_or_name_is_refused(server):
    url = server["url"]
    dup = httpx.post(f"{url}/admin/variants", json={"name": "base", "source": "x"})
    assert dup.status_code == 400 and "already served" in dup.json()["error"]["message"]
    missing = httpx.post(f"{url}/admin/variants", json={"name": "ghost", "source": "/no/such/model"}, timeout=60)
    assert missing.status_code == 400 and "could not load" in missing.json()["error"]["message"]
    assert httpx.post(f"{url}/admin/variants", json={"name": "bad name!", "source": "x"}).status_code == 422
    assert sorted(m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]) == ["base", "new"]
