"""Regression tests for the defects found by probing `alignkit serve` (issue 25), each against a real server process:
a refused A/B change changes nothing; ratings and votes belong to the user (or key) that got the answer, and a
user's second thumb replaces the first; values that used to give 500 give 4xx; two concurrent adds of one variant;
an empty admin key on a public bind; variant-source errors that do not reveal the file system; a length cut in
the middle of a character; the bounded queue's 429 with Retry-After; a disconnected stream stops decoding."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import time

import httpx2 as httpx
import pytest
from serve_helpers import serve_process

from alignkit.serve.store import Store


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probes")
    args = [
        "--variant",
        f"base={tiny_model_dir}",
        "--variant",
        f"new={tiny_model_dir}",
        "--weights",
        "base=0.5,new=0.5",
        "--db",
        str(tmp / "store.sqlite"),
        "--max-tokens",
        "512",
        "--max-batch-size",
        "1",
        "--max-waiting",
        "1",
    ]  # fmt: skip (one request decodes, one waits: the queue test needs no server of its own)
    with serve_process(args, tmp / "server.log") as url:
        yield {"url": url, "db": tmp / "store.sqlite", "tiny": tiny_model_dir, "tmp": tmp}


def chat(url: str, user: str | None = None, **kw) -> httpx.Response:
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kw}
    if user:
        body["user"] = user
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def weight_gauges(url: str) -> dict[str, float]:
    lines = [x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith("alignkit_variant_weight{")]
    return {x.split('"')[1]: float(x.rsplit(" ", 1)[1]) for x in lines}


def test_huge_weights_normalize_and_a_refused_change_changes_nothing(server):
    url = server["url"]
    r = httpx.put(f"{url}/admin/weights", json={"weights": {"base": 1e308, "new": 1e308}})
    assert r.status_code == 200 and r.json()["weights"] == {"base": 0.5, "new": 0.5}
    before = httpx.get(f"{url}/admin/weights").json()
    for bad in ({"base": -1.0, "new": 1.0}, {"base": 0.0, "new": 0.0}, {"nope": 1.0}):
        assert httpx.put(f"{url}/admin/weights", json={"weights": bad}).status_code == 400
    raw = b'{"weights": {"base": NaN, "new": 1}}'
    r = httpx.put(f"{url}/admin/weights", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    after = httpx.get(f"{url}/admin/weights").json()
    assert after == before and weight_gauges(url) == {"base": 0.5, "new": 0.5}
    users = {chat(url, user=f"u{i}", model="auto").headers["x-alignkit-variant"] for i in range(12)}
    assert users == {"base", "new"}  # routing still splits traffic


def test_feedback_and_votes_belong_to_their_user(server):
    url = server["url"]
    rid = chat(url, user="alice").json()["id"]
    post = lambda body: httpx.post(f"{url}/v1/feedback", json={"response_id": rid, **body})  # noqa: E731
    assert post({"value": "up", "user": "bob"}).status_code == 403
    assert post({"value": "up"}).status_code == 403  # anonymous is not alice either
    first = post({"value": "up", "user": "alice", "feedback_id": "fb-alice-1"})
    assert first.status_code == 201 and first.json()["replaced"] is None
    assert post({"value": "up", "user": "alice", "feedback_id": "fb-alice-1"}).status_code == 200  # a retry
    second = post({"value": "down", "user": "alice", "comment": "changed my mind"})
    assert second.status_code == 201 and second.json()["replaced"] == "up" and second.json()["value"] == "down"
    store = Store(server["db"])
    try:
        rows = [f for f in store.feedback() if f["response_id"] == rid]
        assert [(f["id"], f["value"], f["comment"]) for f in rows] == [("fb-alice-1", "down", "changed my mind")]
    finally:
        store.close()

    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "user": "alice"}
    cid = httpx.post(f"{url}/v1/compare", json=body, timeout=60).json()["id"]
    vote = lambda v, user: httpx.post(f"{url}/v1/compare/{cid}/vote", json={"vote": v, "user": user})  # noqa: E731
    refused = vote("right", "bob")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_owner"
    own = vote("left", "alice")
    assert own.status_code == 201 and own.json()["vote"] == "left"
    again = vote("right", "alice")  # the first vote stands
    assert again.status_code == 200 and again.json() == {"id": cid, "object": "vote", "vote": "left", "stored": False}

    anonymous = chat(url).json()["id"]  # no user and no key: anyone may rate it, once per feedback id
    r = httpx.post(f"{url}/v1/feedback", json={"response_id": anonymous, "value": "up", "user": "carol"})
    assert r.status_code == 201


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1180591620717411303424}',
        b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
        b'{"messages": [{"role": "user", "content": "hi"}], "user": "\\ud800"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}',
    ],
)
def test_values_that_used_to_crash_are_refused_with_4xx(server, raw):
    r = httpx.post(f"{server['url']}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_a_lone_surrogate_in_feedback_is_refused(server):
    rid = chat(server["url"], user="dora").json()["id"]
    raw = b'{"response_id": "' + rid.encode() + b'", "value": "up", "user": "dora", "comment": "\\ud800"}'
    r = httpx.post(f"{server['url']}/v1/feedback", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_concurrent_adds_of_one_variant_name(server):
    body = {"name": "twin", "source": server["tiny"], "weight": 0.0}
    with cf.ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(lambda _: httpx.post(f"{server['url']}/admin/variants", json=body, timeout=120)
                                .status_code, range(2)))  # fmt: skip
    assert codes == [200, 400]
    names = [m["id"] for m in httpx.get(f"{server['url']}/v1/models").json()["data"]]
    assert names.count("twin") == 1


def test_variant_source_errors_do_not_reveal_the_file_system(server, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    messages = []
    for i, source in enumerate([str(tmp_path / "missing"), str(tmp_path / "empty"), str(tmp_path / "file.txt")]):
        r = httpx.post(f"{server['url']}/admin/variants", json={"name": f"bad{i}", "source": source}, timeout=60)
        assert r.status_code == 400
        messages.append(r.json()["error"]["message"].replace(source, "SOURCE"))
    assert len(set(messages)) == 1, messages


def test_an_empty_admin_key_counts_as_no_key_on_a_public_bind(tmp_path):
    cmd = [sys.executable, "-m", "alignkit", "serve", "--host", "0.0.0.0", "--admin-key", "", "--admin-key", " ",
           "--db", str(tmp_path / "s.sqlite")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no admin key is set" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_a_length_cut_inside_a_character_stores_no_replacement_character(embedded_tokenizer):
    from alignkit.data import Tokenizer
    from alignkit.generation.decode import completion_text

    tok = Tokenizer(embedded_tokenizer)
    ids = tok.hf.encode("ok 😀", add_special_tokens=False)
    for cut in range(1, len(ids) + 1):
        text = completion_text(tok, ids[:cut], (), "length")
        assert "\ufffd" not in text and "ok 😀".startswith(text)
    assert completion_text(tok, ids, (), "eos") == "ok 😀"


def test_a_full_queue_answers_429_with_retry_after(server):
    url = server["url"]  # --max-batch-size 1 --max-waiting 1

    def one(i):
        return chat(url, max_tokens=400, temperature=1.0, seed=i)

    with cf.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(one, range(6)))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    refused = next(r for r in replies if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["code"] == "queue_full"
    assert 'alignkit_rejected_requests_total{reason="queue"}' in httpx.get(f"{url}/metrics").text


def test_a_disconnected_stream_stops_decoding(server):
    url = server["url"]
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "stream": True,
            "temperature": 1.0, "seed": 3}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data:")
            if chunks >= 3:
                break  # the client leaves mid-answer
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith("alignkit_decode_rows{")]
        if rows and all(float(x.rsplit(" ", 1)[1]) == 0 for x in rows):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"still decoding after the client left: {rows}")
