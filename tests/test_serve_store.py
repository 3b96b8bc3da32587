"""alignkit.serve.store on SQLite and on a throwaway PostgreSQL server (tests/pg_server.py; skipped without one)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg_server import _free_port, postgres_server, postgres_url  # noqa: F401 (fixtures)

from alignkit.errors import UserError
from alignkit.serve.store import DEFAULT_DB, NotFound, Store, StoreError
from alignkit.serve.store import schema as store_schema
from alignkit.serve.store.schema import Migration, add_column

WRITER = str(Path(__file__).with_name("store_writer.py"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "nested" / "dir" / "store.sqlite")  # parent folders are created
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()


def response(id: str, **kw) -> dict:
    row = {
        "id": id, "request_id": id, "created": 1000.0, "variant": "base", "model": "tiny",
        "user_hash": "ab" * 32, "messages": [{"role": "user", "content": "What is 2+2?"}], "content": "4",
        "finish_reason": "stop", "prompt_tokens": 7, "completion_tokens": 1, "latency_s": 0.25, "ttft_s": 0.1,
        "params": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 16, "seed": None, "stop": ["\n"]},
        "flags": ["pii"], "comparison_id": None,
    }  # fmt: skip
    row.update(kw)
    return row


def comparison(id: str, **kw) -> dict:
    row = {"id": id, "created": 2000.0, "user_hash": None, "messages": [{"role": "user", "content": "Hi"}],
           "response_a": "ra", "response_b": "rb", "variant_a": "base", "variant_b": "new",
           "a_shown": "right"}  # fmt: skip
    row.update(kw)
    return row


def raw_versions(url: str) -> list[int]:
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql("SELECT version FROM schema_version ORDER BY version")]
    finally:
        engine.dispose()


def test_round_trips(store):
    rows = [response("chatcmpl-1"), response("chatcmpl-1-1", content="four", flags=[], comparison_id="cmp-1")]
    store.add_responses(rows)
    assert store.get_response("chatcmpl-1") == rows[0]
    assert store.get_response("chatcmpl-1-1") == rows[1]
    assert store.get_response("nope") is None
    minimal = {"id": "r-min", "variant": "base", "model": "m", "messages": [], "content": ""}
    store.add_responses([minimal])
    got = store.get_response("r-min")
    assert got["request_id"] == "r-min" and got["params"] == {} and got["flags"] == [] and got["ttft_s"] is None
    assert isinstance(got["created"], float)

    row, created = store.add_feedback("chatcmpl-1", "up", "nice", "fb-client-1", "u" * 64)
    assert created
    snapshot = {"messages": rows[0]["messages"], "content": "4", "variant": "base", "model": "tiny"}
    expected = {"id": "fb-client-1", "response_id": "chatcmpl-1", "value": "up", "comment": "nice",
                "user_hash": "u" * 64, "snapshot": snapshot, "variant": "base"}  # fmt: skip
    assert {k: row[k] for k in expected} == expected
    assert store.feedback() == [row] and store.get_feedback("fb-client-1") == row
    generated, created = store.add_feedback("chatcmpl-1-1", "down")
    assert created and generated["id"].startswith("fb-") and len(generated["id"]) == 35

    c = comparison("cmp-1")
    stored = store.add_comparison(c)
    assert stored == {**c, "vote": None, "vote_id": None, "voted": None, "vote_user_hash": None}
    assert store.get_comparison("cmp-1") == stored and store.get_comparison("cmp-x") is None
    assert store.comparisons() == [] and store.comparisons(voted_only=False) == [stored]
    voted, created = store.add_vote("cmp-1", "both_bad", "v-1", "h" * 64)
    assert created and voted["vote"] == "both_bad" and voted["vote_id"] == "v-1" and voted["vote_user_hash"] == "h" * 64
    assert isinstance(voted["voted"], float) and store.comparisons() == [voted] == [store.get_comparison("cmp-1")]
    assert store.counts() == {"responses": 3, "feedback": 2, "comparisons": 1, "votes": 1}
    assert store.check() == "ok" and store.check(full=True) == "ok"
    inspector = sa.inspect(store._db.read)
    indexed = lambda table: {c for ix in inspector.get_indexes(table) for c in ix["column_names"]}
    assert {"created", "variant"} <= indexed("responses") and {"created", "response_id"} <= indexed("feedback")
    assert {"created", "variant_a", "variant_b"} <= indexed("comparisons")


def test_feedback_is_idempotent_also_under_concurrency(store):
    store.add_responses([response("r1"), response("r2", variant="new")])
    first, created = store.add_feedback("r1", "up", feedback_id="fb-same")
    assert created
    again, created = store.add_feedback("r1", "down", comment="changed my mind", feedback_id="fb-same")
    assert not created and again == first  # the stored row, unchanged
    results, barrier = [], threading.Barrier(8)

    def post(i):
        barrier.wait()
        results.append(store.add_feedback("r2", "down", feedback_id="fb-race"))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert len({repr(sorted(row.items())) for row, _ in results}) == 1
    ids = [f["id"] for f in store.feedback()]
    assert sorted(ids) == ["fb-race", "fb-same"]
    assert store.get_feedback("fb-race")["variant"] == "new"


def test_not_found_and_bad_values(store):
    store.add_responses([response("r1")])
    with pytest.raises(NotFound, match="no response 'missing'") as e:
        store.add_feedback("missing", "up")
    assert isinstance(e.value, KeyError) and isinstance(e.value, StoreError) and isinstance(e.value, UserError)
    with pytest.raises(NotFound, match="no comparison 'cmp-missing'"):
        store.add_vote("cmp-missing", "a")
    for bad in ("UP", "meh", None, 1):
        with pytest.raises(ValueError, match="feedback value"):
            store.add_feedback("r1", bad)
    store.add_comparison(comparison("cmp-1"))
    with pytest.raises(ValueError, match="vote"):
        store.add_vote("cmp-1", "left")
    with pytest.raises(ValueError, match="unknown field"):
        store.add_responses([response("r2", colour="red")])
    with pytest.raises(ValueError, match="missing content"):
        store.add_responses([{k: v for k, v in response("r2").items() if k != "content"}])
    with pytest.raises(ValueError, match="JSON"):
        store.add_responses([response("r2", params={"x": object()})])
    with pytest.raises(ValueError, match="a_shown"):
        store.add_comparison(comparison("cmp-2", a_shown="top"))
    with pytest.raises(ValueError, match="add_vote"):
        store.add_comparison(comparison("cmp-2", vote="a"))
    with pytest.raises(ValueError, match="finite"):
        store.set_weights({"base": float("nan")}, "me")
    with pytest.raises(StoreError, match="refused"):
        store.add_responses([response("r1")])  # already stored
    with pytest.raises(StoreError, match="refused"):
        store.add_comparison(comparison("cmp-1"))
    assert store.counts() == {"responses": 1, "feedback": 0, "comparisons": 1, "votes": 0}


def _batched(store: Store, calls: list) -> dict:
    """Run the calls from threads while the writer is held inside a transaction, so they commit as one batch;
    returns each call's result or exception by index."""
    gate, results = threading.Event(), {}
    holder = threading.Thread(target=store._submit, args=(lambda conn: gate.wait(30),))
    holder.start()
    time.sleep(0.2)  # the writer is now inside the holder's transaction

    def call(i, fn):
        try:
            results[i] = fn()
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while store._writer.queue.qsize() < len(calls) and time.time() < deadline:
        time.sleep(0.01)
    before = store.writer_stats()
    gate.set()
    for t in threads + [holder]:
        t.join()
    after = store.writer_stats()
    assert after["batches"] - before["batches"] == 1 and after["largest_batch"] >= len(calls)
    results["retried"] = after["retried_batches"] - before["retried_batches"]
    return results


def test_one_bad_request_in_a_batch_fails_alone(store):
    store.add_responses([response("r1")])
    post = lambda i, rid: lambda: store.add_feedback(rid, "up", feedback_id=f"fb-{i}")
    # unknown ids raise NotFound before changing anything: the batch goes on without a retry
    got = _batched(store, [post(i, "missing" if i % 3 == 0 else "r1") for i in range(12)])
    assert got["retried"] == 0
    for i in range(12):
        assert isinstance(got[i], NotFound) if i % 3 == 0 else got[i][1] is True
    # a duplicate response id fails the transaction: rolled back, then each request alone
    calls = [post(i, "r1") for i in range(100, 110)] + [lambda: store.add_responses([response("r1")])]
    got = _batched(store, calls + [post(200, "missing")])
    assert got["retried"] == 1
    assert all(got[i][1] is True for i in range(10))
    assert isinstance(got[10], StoreError) and "refused" in str(got[10]) and isinstance(got[11], NotFound)
    expected = [f"fb-{i}" for i in range(12) if i % 3] + [f"fb-{i}" for i in range(100, 110)]
    assert sorted(f["id"] for f in store.feedback()) == sorted(expected)
    assert store.counts()["responses"] == 1


def test_first_vote_stands(store):
    store.add_comparison(comparison("cmp-1"))
    row, created = store.add_vote("cmp-1", "a", "v-1")
    assert created and row["vote"] == "a"
    retry, created = store.add_vote("cmp-1", "a", "v-1")
    assert not created and retry == row
    other, created = store.add_vote("cmp-1", "b", "v-2")
    assert not created and other == row  # the first vote stands; vote_id tells a retry from a second vote
    generated, created = store.add_vote(store.add_comparison(comparison("cmp-2"))["id"], "tie")
    assert created and generated["vote_id"].startswith("vote-")
    assert store.counts()["votes"] == 2


def test_weights_history(store):
    assert store.latest_weights() is None and store.weight_history() == []
    a = store.set_weights({"base": 1.0}, "startup")
    b = store.set_weights({"base": 0.9, "new": 0.1}, "admin")
    c = store.set_weights({"base": 0, "new": 1}, "admin")
    assert a["id"] < b["id"] < c["id"] and a["actor"] == "startup"
    assert store.latest_weights() == {"base": 0.0, "new": 1.0}
    assert store.weight_history() == [a, b, c]
    assert isinstance(store.latest_weights()["new"], float)


def test_counts_and_since_until(store):
    store.add_responses([response(f"r{t}", created=float(t)) for t in (100, 200, 300)])
    ids = lambda rows: [r["id"] for r in rows]
    assert ids(store.responses()) == ["r100", "r200", "r300"]
    assert ids(store.responses(since=200)) == ["r200", "r300"]
    assert ids(store.responses(until=200)) == ["r100"]
    assert ids(store.responses(since=100, until=300)) == ["r100", "r200"]
    store.add_feedback("r100", "up", feedback_id="f-early")
    time.sleep(0.02)
    middle = time.time()
    time.sleep(0.02)
    store.add_feedback("r300", "down", feedback_id="f-late")
    assert ids(store.feedback()) == ["f-early", "f-late"]
    assert ids(store.feedback(since=middle)) == ["f-late"] and ids(store.feedback(until=middle)) == ["f-early"]
    assert [f["variant"] for f in store.feedback()] == ["base", "base"]
    for t in (10, 20, 30):
        store.add_comparison(comparison(f"c{t}", created=float(t)))
    store.add_vote("c20", "a")
    store.add_vote("c30", "b")
    assert ids(store.comparisons()) == ["c20", "c30"] and ids(store.comparisons(until=30)) == ["c20"]
    assert ids(store.comparisons(since=15, voted_only=False)) == ["c20", "c30"]
    assert store.counts() == {"responses": 3, "feedback": 2, "comparisons": 3, "votes": 2}


def test_5000_concurrent_feedback_posts_each_stored_once(store):
    store.add_responses([response("r1")])
    acked: list[list[str]] = [[] for _ in range(50)]
    errors, seen_counts, done = [], [], threading.Event()

    def post(t):
        try:
            for i in range(100):
                row, created = store.add_feedback("r1", "up" if i % 2 else "down", feedback_id=f"fb-{t}-{i}")
                assert created
                acked[t].append(row["id"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def read():  # reads run while the writer writes
        while not done.is_set():
            seen_counts.append(store.counts()["feedback"])
            time.sleep(0.01)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=post, args=(t,)) for t in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert errors == []
    stored = [f["id"] for f in store.feedback()]
    assert len(stored) == len(set(stored)) == 5000
    assert set(stored) == {i for ids in acked for i in ids}
    assert seen_counts == sorted(seen_counts) and len(seen_counts) > 1
    stats = store.writer_stats()
    assert stats["batches"] < stats["writes"]  # group commit: many writes per transaction


def test_migration_from_older_version(store_url, monkeypatch):
    released = list(store_schema.MIGRATIONS)
    monkeypatch.setattr(store_schema, "MIGRATIONS", released[:1])  # a store written by the first release
    with Store(store_url) as s:
        s.add_responses([response("r1")])
        s.add_feedback("r1", "up", feedback_id="fb-old")
    assert raw_versions(store_url) == [1]
    monkeypatch.setattr(store_schema, "MIGRATIONS", released)  # this release: v2 adds rollout_events
    with Store(store_url) as s:
        assert s.schema_version == len(released) and s.get_feedback("fb-old")["value"] == "up"
        s.add_rollout_event({"loop": "l", "action": "held", "reason": "r", "numbers": {"n": 1}})
        assert [e["action"] for e in s.rollout_events("l")] == ["held"]
    assert raw_versions(store_url) == list(range(1, len(released) + 1))
    nxt = len(released) + 1

    def next_model(md):
        md.tables["feedback"].append_column(sa.Column("source", sa.String))

    def next_upgrade(conn, md):
        table = md.tables["feedback"]
        add_column(conn, table.c.source)
        conn.execute(table.update().values(source="legacy"))
        sa.Index("ix_feedback_source", table.c.source).create(conn)

    monkeypatch.setattr(store_schema, "MIGRATIONS", [*released, Migration(nxt, "feedback.source", next_model,
                                                                          next_upgrade)])  # fmt: skip
    with Store(store_url) as s:
        assert s.schema_version == nxt and s.check() == "ok"
        assert s.get_feedback("fb-old")["source"] == "legacy"
        row, _ = s.add_feedback("r1", "down", feedback_id="fb-new")
        assert row["source"] is None and s.get_feedback("fb-new") == row
    assert raw_versions(store_url) == list(range(1, nxt + 1))

    def broken_upgrade(conn, md):
        add_column(conn, md.tables["feedback"].c.broken)
        raise RuntimeError("migration bug")

    def broken_model(md):
        md.tables["feedback"].append_column(sa.Column("broken", sa.String))

    broken = Migration(nxt + 1, "broken", broken_model, broken_upgrade)
    monkeypatch.setattr(store_schema, "MIGRATIONS", [*store_schema.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(store_url)
    monkeypatch.setattr(store_schema, "MIGRATIONS", store_schema.MIGRATIONS[:nxt])
    with Store(store_url) as s:  # the failed migration was rolled back as a whole
        assert "broken" not in s.get_feedback("fb-old") and s.counts()["feedback"] == 2
    assert raw_versions(store_url) == list(range(1, nxt + 1))


def test_newer_schema_is_refused(store_url):
    Store(store_url).close()
    url = store_url if "://" in store_url else f"sqlite:///{store_url}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO schema_version (version, description, applied) VALUES (99, 'future', 0)")
    engine.dispose()
    latest = len(store_schema.MIGRATIONS)
    with pytest.raises(StoreError, match=f"schema version 99, newer than this alignkit's {latest}") as e:
        Store(store_url)
    assert ("store.sqlite" in str(e.value) or "postgresql+psycopg://" in str(e.value)) and "upgrade alignkit" in str(
        e.value
    )
    assert raw_versions(store_url) == [*range(1, latest + 1), 99]


def test_corrupt_or_foreign_file_is_refused_and_left_untouched(tmp_path):
    junk = tmp_path / "notes.sqlite"
    junk.write_bytes(b"these are my notes, not a database\n" * 200)
    before = junk.read_bytes()
    with pytest.raises(StoreError, match="not a readable alignkit store") as e:
        Store(str(junk))
    assert str(junk) in str(e.value) and ".recover" in str(e.value) and "backup" in str(e.value)
    assert junk.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]

    db = tmp_path / "store.sqlite"
    with Store(db) as s:
        s.add_responses([response(f"r{i}", content="x" * 3000) for i in range(40)])
    size = db.stat().st_size
    data = bytearray(db.read_bytes())
    page = 4096
    data[page * 2 : page * 2 + 200] = b"\xff" * 200  # a b-tree page's header
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="not a readable alignkit store") as e:
        Store(str(db))
    assert str(db) in str(e.value)
    assert db.read_bytes() == bytes(data) and db.stat().st_size == size


def test_sqlite_settings_and_urls(tmp_path, monkeypatch):
    with Store(f"sqlite:///{tmp_path}/a/b.sqlite") as s:
        assert s.path == str(tmp_path / "a" / "b.sqlite")
        with s._db.read.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            assert pragma("journal_mode") == "wal" and pragma("synchronous") == 2  # FULL
            assert pragma("foreign_keys") == 1 and pragma("busy_timeout") >= 1000
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_DB == "runs/serve/alignkit.sqlite"
    with Store() as s:
        assert s.path == str(tmp_path / DEFAULT_DB) and repr(s) == f"Store({s.path!r})"
    with Store(Path("rel.sqlite")) as s:
        assert s.path == str(tmp_path / "rel.sqlite")
    for bad in ("sqlite://", "sqlite:///:memory:", "mysql://u@h/db"):
        with pytest.raises(StoreError):
            Store(bad)


def test_unreachable_postgres_names_the_url_and_masks_the_password():
    pytest.importorskip("psycopg")
    url = f"postgresql://alice:s3cret@127.0.0.1:{_free_port()}/feedback"
    with pytest.raises(StoreError) as e:
        Store(url)
    msg = str(e.value)
    assert "postgresql+psycopg://alice:***@127.0.0.1" in msg and "s3cret" not in msg
    assert "Fix:" in msg and "server is running" in msg


def test_close_commits_queued_writes_then_refuses(store):
    store.add_responses([response("r1")])
    threads = [threading.Thread(target=store.add_feedback, args=("r1", "up", None, f"fb-{i}")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.add_feedback("r1", "up")
    with pytest.raises(StoreError, match="closed"):
        store.check()


def _kill_rounds(url: str, lane: int, rounds: int, tmp_path: Path, acked: list[str]) -> None:
    """Fork a writer (through a store_writer.py zygote), let it write for a random moment (some rounds: kill it while
    it opens the store), SIGKILL it, keep the ids it printed in full."""
    rng = random.Random(1000 + lane)
    with open(tmp_path / f"zygote{lane}.err", "wb") as err:
        zygote = subprocess.Popen([sys.executable, WRITER, "--zygote"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)  # fmt: skip
    ask = lambda *cmd: (zygote.stdin.write(json.dumps(cmd) + "\n"), zygote.stdin.flush(), zygote.stdout.readline())[2]
    try:
        for round in range(rounds):
            out = tmp_path / f"writer{lane}.{round}.out"
            printed = lambda out=out: out.read_bytes() if out.exists() else b""  # none yet, or killed before it
            answer = ask(url, "r-kill", f"k{lane}.{round}", 4, str(out))
            assert answer.strip().isdigit(), (answer, (tmp_path / f"zygote{lane}.err").read_text())
            pid = int(answer)
            if round % 5 == 4:
                time.sleep(rng.uniform(0.0, 0.15))  # may land while it opens the store
            else:
                deadline = time.monotonic() + 30
                while b"\n" not in printed() and time.monotonic() < deadline:
                    time.sleep(0.005)
                first = printed().split(b"\n")[0]
                assert first == b"ready", first.decode()[-2000:]
                time.sleep(rng.uniform(0.0, 0.2))
            os.kill(pid, signal.SIGKILL)
            assert int(ask("wait", pid)) == -signal.SIGKILL, printed()[-2000:]
            lines = printed().split(b"\n")[:-1]  # a last line without its newline was not fully printed
            acked += [line.decode() for line in lines if line != b"ready"]
    finally:
        zygote.stdin.close()
        zygote.wait(30)


def test_sigkilled_writers_lose_no_acknowledged_feedback(store_url, tmp_path):
    """Writer processes (two at a time) are SIGKILLed at random moments, 20 times; every id they printed (after
    its write returned) survives, exactly once, and the database stays intact."""
    with Store(store_url) as s:
        s.add_responses([response("r-kill")])
    acked: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def lane(i: int) -> None:
        try:
            _kill_rounds(store_url, i, 10, tmp_path, acked[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    lanes = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    if errors:
        raise errors[0]
    ids = acked[0] + acked[1]
    assert len(ids) > 100 and len(ids) == len(set(ids))
    with Store(store_url) as s:
        assert s.check(full=True) == "ok"
        stored = [f["id"] for f in s.feedback()]
        assert len(stored) == len(set(stored))
        missing = set(ids) - set(stored)
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:3]}"
    if "://" not in store_url:
        con = sqlite3.connect(store_url)
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        con.close()
