"""The durable store of served responses, feedback, comparisons and A/B weight changes (contract:
docs/serving_design.md).

SQLite by default (a path or ``sqlite:///path``), PostgreSQL by URL (``postgresql+psycopg://...``): the same tables
and code for both (opening and errors: ``db``). The schema is versioned; missing migrations (``schema``)
are applied at start, and a database newer than the code is refused. Writes go through one writer thread per
``Store`` that commits queued writes together (group commit: ``commit``); each write call returns only after
its transaction committed. Reads use their own pooled connections and run while the writer writes (WAL).
Rows are plain dicts with JSON columns decoded; times are unix seconds (float); ``since`` is inclusive, ``until``
exclusive.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any, Callable

import sqlalchemy as sa

from alignkit.serve.store import schema as store_schema
from alignkit.serve.store.commit import GroupCommit
from alignkit.serve.store.db import DEFAULT_DB, Database, NotFound, StoreError, first_line
from alignkit.serve.store.schema import build_metadata, schema_version

__all__ = ["DEFAULT_DB", "FEEDBACK_VALUES", "NotFound", "Store", "StoreError", "VOTES"]

FEEDBACK_VALUES = ("up", "down")
VOTES = ("a", "b", "tie", "both_bad")


def _check_json(kind: str, key: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{kind}.{key} is not JSON-serializable: {e}") from None


class Store:
    """The store at ``url`` (a path, ``sqlite:///path`` or ``postgresql+psycopg://user:pw@host/db``).

    ``integrity_check``: run ``PRAGMA integrity_check`` on an existing SQLite file before opening it (reads the whole
    file). ``batch_max``: most writes per group commit. Use as a context manager or call ``close()``.
    """

    def __init__(self, url: str | os.PathLike = DEFAULT_DB, *, integrity_check: bool = True, batch_max: int = 256):
        self._db = db = Database(url, integrity_check)
        self.url, self.path, self.where, self.dialect = db.url, db.path, db.where, db.dialect
        try:
            self.schema_version = store_schema.migrate(db)
        except BaseException:
            db.dispose()
            raise
        self._tables = build_metadata(store_schema.MIGRATIONS).tables
        self._sql = self._statements()
        closed = lambda: StoreError(f"the store {self.where} is closed; nothing was saved")
        self._writer = GroupCommit(db.write, self._as_store_error, closed, batch_max, clean=(NotFound,))

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _submit(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run ``fn(conn)`` in the writer's next group commit; returns once committed (commit.GroupCommit)."""
        return self._writer.submit(fn)

    def _as_store_error(self, e: BaseException) -> BaseException:
        if isinstance(e, sa.exc.IntegrityError):
            return StoreError(f"the store {self.where} refused the write: {first_line(e)}")
        if isinstance(e, sa.exc.DBAPIError):
            return self._db.error(e, "writing to")
        return e

    def writer_stats(self) -> dict:
        """Group-commit counters: batches, writes, largest_batch, retried_batches (batches rerun one by one)."""
        return dict(self._writer.stats)

    def close(self) -> None:
        """Commit the queued writes, stop the writer and close the connections. Later writes raise StoreError."""
        if self._writer.closed:
            return
        self._writer.close()
        self._db.dispose()

    # ---- writes --------------------------------------------------------------------------------------------------

    def _row(self, table: str, row: Mapping, required: tuple, defaults: dict) -> dict:
        kind = table.rstrip("s")
        if not isinstance(row, Mapping):
            raise ValueError(f"a {kind} row must be a dict, got {type(row).__name__}")
        t = self._tables[table]
        unknown = sorted(set(row) - set(t.c.keys()))
        if unknown:
            raise ValueError(f"{kind} row: unknown field(s) {', '.join(unknown)}; known: {', '.join(t.c.keys())}")
        missing = [k for k in required if row.get(k) is None]
        if missing:
            raise ValueError(f"{kind} row {row.get('id')!r}: missing {', '.join(missing)}")
        out = {}
        for col in t.c:
            value = row.get(col.name)
            if value is None and col.name in defaults:
                d = defaults[col.name]
                value = d(out) if callable(d) else d
            if isinstance(col.type, sa.JSON):
                _check_json(kind, col.name, value)
            out[col.name] = value
        return out

    def add_responses(self, rows: list[dict]) -> None:
        """Store response rows (doc's row shape; ``created`` defaults to now, ``request_id`` to ``id``) in one
        transaction; returns after it committed. A stored id raises StoreError."""
        defaults = {"created": lambda r: time.time(), "request_id": lambda r: r["id"], "params": {}, "flags": []}
        out = [self._row("responses", r, ("id", "variant", "model", "messages", "content"), defaults) for r in rows]
        for r in out:
            if not isinstance(r["messages"], list) or not isinstance(r["content"], str):
                raise ValueError(f"response {r['id']!r}: messages must be a list and content a str")
        if out:
            table = self._tables["responses"]
            self._submit(lambda conn: conn.execute(table.insert(), out))

    def add_feedback(self, response_id: str, value: str, comment: str | None = None, feedback_id: str | None = None,
                     user_hash: str | None = None) -> tuple[dict, bool]:  # fmt: skip
        """Store thumbs feedback with a snapshot of the response; returns (row, created).

        Idempotent by ``feedback_id`` (default a new "fb-<hex>"): an id already stored returns the stored row and
        created=False, whatever the new call's other arguments. One rating per user per response: a new rating by
        a ``user_hash`` that already rated the response replaces that row's value, comment and time (returned with
        created=True and ``replaced`` = the earlier value), so a user's latest thumb is the one that counts.
        Unknown response: NotFound; a value other than "up"/"down": ValueError. The row carries the response's
        ``variant``.
        """
        if value not in FEEDBACK_VALUES:
            raise ValueError(f"feedback value {value!r}: use one of {', '.join(FEEDBACK_VALUES)}")
        if comment is not None and not isinstance(comment, str):
            raise ValueError("feedback comment must be a string")
        fid = feedback_id if feedback_id is not None else f"fb-{uuid.uuid4().hex}"
        if not isinstance(fid, str) or not fid:
            raise ValueError("feedback_id must be a non-empty string")
        row = {"id": fid, "response_id": response_id, "created": time.time(), "value": value, "comment": comment,
               "user_hash": user_hash}  # fmt: skip
        F, sql = self._tables["feedback"], self._sql

        def write(conn: sa.Connection) -> tuple[dict, bool]:
            snap = conn.execute(sql["snapshot"], {"r": response_id}).mappings().first()
            if snap is None:
                raise NotFound(f"no response '{response_id}' in the store")  # before any change: a clean error
            stored = self._feedback_row(conn, fid)
            if stored is not None:
                return stored, False
            if user_hash is not None:
                earlier = conn.execute(
                    sa.select(F.c.id, F.c.value).where(F.c.response_id == response_id, F.c.user_hash == user_hash)
                ).first()
                if earlier is not None:
                    change = {"value": value, "comment": comment, "created": row["created"]}
                    conn.execute(F.update().where(F.c.id == earlier.id).values(**change))
                    return {**self._feedback_row(conn, earlier.id), "replaced": earlier.value}, True
            new = {**row, "snapshot": dict(snap)}
            if conn.execute(sql["feedback_insert"], new).rowcount == 1:
                return {**{c: new.get(c) for c in F.c.keys()}, "variant": snap["variant"]}, True
            return self._feedback_row(conn, fid), False

        return self._submit(write)

    def _statements(self) -> dict:
        """The hot writes' statements, built once (SQLAlchemy then reuses their compiled form)."""
        R, F = self._tables["responses"], self._tables["feedback"]
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return {
            "snapshot": sa.select(R.c.messages, R.c.content, R.c.variant, R.c.model).where(R.c.id == sa.bindparam("r")),
            # INSERT ... ON CONFLICT (id) DO NOTHING: the primary key decides between concurrent posts of one id
            "feedback_insert": insert(F)
            .on_conflict_do_nothing(index_elements=["id"])
            .execution_options(preserve_rowcount=True),
            "feedback_row": self._feedback_select().where(F.c.id == sa.bindparam("fid")),
        }

    def add_comparison(self, row: dict) -> dict:
        """Store a comparison (doc's row shape, not yet voted); returns the stored row. A stored id raises
        StoreError."""
        required = ("id", "messages", "response_a", "response_b", "variant_a", "variant_b", "a_shown")
        out = self._row("comparisons", row, required, {"created": lambda r: time.time()})
        if out["a_shown"] not in ("left", "right"):
            raise ValueError(f"comparison {out['id']!r}: a_shown must be 'left' or 'right', got {out['a_shown']!r}")
        if any(out[k] is not None for k in ("vote", "vote_id", "voted", "vote_user_hash")):
            raise ValueError(f"comparison {out['id']!r}: store the vote with add_vote")
        table = self._tables["comparisons"]
        self._submit(lambda conn: conn.execute(table.insert().values(**out)))
        return out

    def add_vote(self, comparison_id: str, vote: str, vote_id: str | None = None,
                 user_hash: str | None = None) -> tuple[dict, bool]:  # fmt: skip
        """Record the vote ("a", "b", "tie", "both_bad") on a comparison; returns (row, created).

        The first vote stands: a comparison already voted is left unchanged and returned with created=False, both for
        a retry with the same ``vote_id`` (default a new "vote-<hex>") and for a different later vote; compare
        ``row["vote_id"]`` to tell them apart. Unknown comparison: NotFound; another vote value: ValueError.
        """
        if vote not in VOTES:
            raise ValueError(f"vote {vote!r}: use one of {', '.join(VOTES)}")
        vid = vote_id if vote_id is not None else f"vote-{uuid.uuid4().hex}"
        now = time.time()
        C = self._tables["comparisons"]

        def write(conn: sa.Connection) -> tuple[dict, bool]:
            row = conn.execute(sa.select(C).where(C.c.id == comparison_id)).mappings().first()
            if row is None:
                raise NotFound(f"no comparison '{comparison_id}' in the store")  # before any change: a clean error
            if row["vote"] is not None:
                return dict(row), False
            votes = {"vote": vote, "vote_id": vid, "voted": now, "vote_user_hash": user_hash}
            update = C.update().where(C.c.id == comparison_id, C.c.vote.is_(None)).values(**votes)
            if conn.execute(update).rowcount == 1:
                return {**row, **votes}, True
            return dict(conn.execute(sa.select(C).where(C.c.id == comparison_id)).mappings().one()), False  # raced

        return self._submit(write)

    def set_weights(self, weights: dict[str, float], actor: str) -> dict:
        """Record an A/B weights change by ``actor``; returns the row (id, created, weights, actor)."""
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError("weights: give a mapping of variant name to weight")
        clean = {}
        for name, w in weights.items():
            number = isinstance(w, (int, float)) and not isinstance(w, bool)
            if not isinstance(name, str) or not number or not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weights[{name!r}] = {w!r}: use a variant name and a finite number >= 0")
            clean[name] = float(w)
        row = {"created": time.time(), "weights": clean, "actor": str(actor)}
        W = self._tables["weight_changes"]

        def write(conn: sa.Connection) -> dict:
            return {"id": conn.execute(W.insert().values(**row)).inserted_primary_key[0], **row}

        return self._submit(write)

    def add_rollout_event(self, row: dict) -> dict:
        """Record a rollout decision of ``alignkit loop`` (loop, action, champion, candidate, share, reason, numbers);
        returns the row with its id."""
        required = ("loop", "action", "reason", "numbers")
        out = self._row("rollout_events", row, required, {"created": lambda r: time.time()})
        out.pop("id", None)
        E = self._tables["rollout_events"]
        return {"id": self._submit(lambda conn: conn.execute(E.insert().values(**out)).inserted_primary_key[0]),
                **out}  # fmt: skip

    def rollout_events(self, loop: str | None = None, last: int | None = None) -> list[dict]:
        """Rollout events (of ``loop``, or all), oldest first; ``last``: only the newest ``last``."""
        E = self._tables["rollout_events"]
        stmt = sa.select(E) if loop is None else sa.select(E).where(E.c.loop == loop)
        if last is not None:
            return self._rows(stmt.order_by(E.c.id.desc()).limit(last))[::-1]
        return self._rows(stmt.order_by(E.c.id))

    def rollout_summary(self) -> dict:
        """{"counts": {action: events}, "latest": {loop: its newest event}} for /metrics and the status page."""
        E = self._tables["rollout_events"]
        counts = self._rows(sa.select(E.c.action, sa.func.count().label("n")).group_by(E.c.action))
        newest = sa.select(sa.func.max(E.c.id)).group_by(E.c.loop)
        latest = self._rows(sa.select(E).where(E.c.id.in_(newest)))
        return {"counts": {r["action"]: int(r["n"]) for r in counts}, "latest": {r["loop"]: r for r in latest}}

    # ---- reads ---------------------------------------------------------------------------------------------------

    def _rows(self, stmt) -> list[dict]:
        with self._db.reading() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    @staticmethod
    def _between(stmt, column, since: float | None, until: float | None):
        if since is not None:
            stmt = stmt.where(column >= since)
        if until is not None:
            stmt = stmt.where(column < until)
        return stmt

    def _feedback_select(self):
        F, R = self._tables["feedback"], self._tables["responses"]
        return sa.select(F, R.c.variant).join(R, F.c.response_id == R.c.id)

    def _feedback_row(self, conn: sa.Connection, fid: str) -> dict | None:
        row = conn.execute(self._sql["feedback_row"], {"fid": fid}).mappings().first()
        return None if row is None else dict(row)

    def get_response(self, id: str) -> dict | None:
        R = self._tables["responses"]
        rows = self._rows(sa.select(R).where(R.c.id == id))
        return rows[0] if rows else None

    def get_feedback(self, id: str) -> dict | None:
        with self._db.reading() as conn:
            return self._feedback_row(conn, id)

    def get_comparison(self, id: str) -> dict | None:
        C = self._tables["comparisons"]
        rows = self._rows(sa.select(C).where(C.c.id == id))
        return rows[0] if rows else None

    def responses(self, since: float | None = None, until: float | None = None) -> list[dict]:
        """Responses created in [since, until), oldest first."""
        R = self._tables["responses"]
        return self._rows(self._between(sa.select(R), R.c.created, since, until).order_by(R.c.created, R.c.id))

    def feedback(self, since: float | None = None, until: float | None = None) -> list[dict]:
        """Feedback created in [since, until), oldest first; each row also has its response's ``variant``."""
        F = self._tables["feedback"]
        stmt = self._between(self._feedback_select(), F.c.created, since, until)
        return self._rows(stmt.order_by(F.c.created, F.c.id))

    def comparisons(self, since: float | None = None, until: float | None = None, voted_only: bool = True) -> list:
        """Comparisons created in [since, until), oldest first; only the voted ones unless ``voted_only=False``."""
        C = self._tables["comparisons"]
        stmt = self._between(sa.select(C), C.c.created, since, until)
        if voted_only:
            stmt = stmt.where(C.c.vote.is_not(None))
        return self._rows(stmt.order_by(C.c.created, C.c.id))

    def counts(self) -> dict[str, int]:
        """Row counts: responses, feedback, comparisons, votes (voted comparisons)."""
        t = self._tables
        C = t["comparisons"]

        def count(table, *where):
            return sa.select(sa.func.count()).select_from(table).where(*where).scalar_subquery()

        stmt = sa.select(count(t["responses"]).label("responses"), count(t["feedback"]).label("feedback"),
                         count(C).label("comparisons"), count(C, C.c.vote.is_not(None)).label("votes"))  # fmt: skip
        return {k: int(v) for k, v in self._rows(stmt)[0].items()}

    def latest_weights(self) -> dict[str, float] | None:
        """The last recorded A/B weights, or None before any."""
        W = self._tables["weight_changes"]
        rows = self._rows(sa.select(W.c.weights).order_by(W.c.id.desc()).limit(1))
        return rows[0]["weights"] if rows else None

    def weight_history(self) -> list[dict]:
        """Every weights change, oldest first."""
        W = self._tables["weight_changes"]
        return self._rows(sa.select(W).order_by(W.c.id))

    def check(self, full: bool = False) -> str:
        """Returns "ok" when the writer runs and the database answers at this schema version (``full``: SQLite's
        ``PRAGMA integrity_check`` too, which reads the whole file); StoreError otherwise."""
        if not self._writer.alive():
            raise StoreError(f"the store {self.where} is closed or its writer stopped")
        with self._db.reading() as conn:
            version = conn.scalar(sa.select(sa.func.max(schema_version.c.version)))
            if version != self.schema_version:
                raise StoreError(f"the store {self.where} is at schema version {version}, expected "
                                 f"{self.schema_version}. Fix: restart the server")  # fmt: skip
            if full and self.path is not None:
                rows = conn.exec_driver_sql("PRAGMA integrity_check").fetchall()
                if [r[0] for r in rows] != ["ok"]:
                    raise self._db.corrupt("integrity_check: " + "; ".join(str(r[0]) for r in rows[:5]))
        return "ok"
