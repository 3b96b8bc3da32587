"""Opening the store's database (used by ``alignkit.serve.store.api``): the URL, SQLite's checks and settings, the
engines, and the errors, which name the file or the URL (password masked) and the fix.

SQLite: a plain path or ``sqlite:///path``; parent folders are created; an existing file passes ``PRAGMA
integrity_check`` on a read-only connection before anything opens it for writing, so a damaged file is never
written to; every connection gets ``journal_mode=WAL``, ``synchronous=FULL``, ``foreign_keys=ON`` and a busy timeout,
and SQLAlchemy emits BEGIN itself (the sqlite3 module's own transaction handling would autocommit DDL).
PostgreSQL: ``postgresql+psycopg://...`` (``postgresql://`` gets the psycopg driver).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from alignkit.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_DB = "runs/serve/alignkit.sqlite"
BUSY_TIMEOUT_MS = 10_000


class StoreError(UserError):
    """The database is unreachable, corrupt, locked or newer than this alignkit; the message names it and the fix."""


class NotFound(StoreError, KeyError):
    """An unknown response or comparison id (the app answers 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Database:
    """The engines of one store: ``read`` (pooled) and ``write`` (one connection: the writer thread, migrations;
    on SQLite its transactions are BEGIN IMMEDIATE, so it takes the write lock up front)."""

    def __init__(self, url: str | os.PathLike, integrity_check: bool = True):
        self.path: str | None = None  # the SQLite file, None for PostgreSQL
        self.url = self._parse(url)
        self.where = self.path or self.url.render_as_string(hide_password=True)
        self.dialect = self.url.get_backend_name()
        if self.path is not None:
            self._prepare_sqlite(integrity_check)
        self.read, self.write = self._engines()

    def _parse(self, url: str | os.PathLike) -> sa.URL:
        text = os.fspath(url)
        if "://" not in text:
            self.path = os.path.abspath(os.path.expanduser(text))
            return sa.URL.create("sqlite", database=self.path)
        try:
            u = sa.make_url(text)
        except sa.exc.ArgumentError as e:
            raise StoreError(f"store URL {text!r}: {e}. Fix: give a file path, sqlite:///PATH or "
                             "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB") from None  # fmt: skip
        backend = u.get_backend_name()
        if backend in ("postgresql", "postgres"):
            if u.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
                u = u.set(drivername="postgresql+psycopg")  # the driver alignkit installs
            return u
        if backend != "sqlite":
            raise StoreError(f"store URL {u.render_as_string(hide_password=True)}: unsupported database '{backend}'. "
                             "Fix: use a file path, sqlite:///PATH or postgresql+psycopg://...")  # fmt: skip
        if not u.database or u.database == ":memory:" or u.database.startswith("file:"):
            raise StoreError(f"store URL {text!r}: give a file, e.g. sqlite:///{DEFAULT_DB} (in-memory is not durable)")
        self.path = os.path.abspath(os.path.expanduser(u.database))
        return u.set(database=self.path)

    def corrupt(self, detail: str) -> StoreError:
        p = self.path
        return StoreError(
            f"{p} is not a readable alignkit store ({detail}); it was left untouched. Fix: restore it from a backup, "
            f"or salvage what is readable with `sqlite3 {p} .recover | sqlite3 {p}.recovered` and use that file, "
            f"or move it away to start an empty store"
        )

    def _prepare_sqlite(self, integrity_check: bool) -> None:
        p = Path(self.path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder of the store {p}: {e}. Fix: choose a writable path") from None
        if not integrity_check or not p.exists() or p.stat().st_size == 0:
            return
        try:
            con = sqlite3.connect(f"{p.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                rows = con.execute("PRAGMA integrity_check").fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise self.corrupt(str(e)) from None
        result = "; ".join(str(r[0]) for r in rows[:5])
        if result != "ok":
            raise self.corrupt(f"integrity_check: {result}")

    def _engines(self) -> tuple[sa.Engine, sa.Engine]:
        try:
            if self.path is not None:
                args = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
                read = sa.create_engine(self.url, connect_args=args, pool_size=8, max_overflow=24)
                write = sa.create_engine(self.url, connect_args=args, pool_size=1, max_overflow=0)
                for engine, begin in ((read, "BEGIN"), (write, "BEGIN IMMEDIATE")):
                    sa.event.listen(engine, "connect", _sqlite_on_connect)
                    sa.event.listen(engine, "begin", _emit_begin(begin))
                return read, write
            args = {} if "connect_timeout" in self.url.query else {"connect_timeout": 10}
            read = sa.create_engine(self.url, connect_args=args, pool_pre_ping=True, pool_size=8, max_overflow=24)
            write = sa.create_engine(self.url, connect_args=args, pool_pre_ping=True, pool_size=1, max_overflow=0)
            return read, write
        except ModuleNotFoundError as e:
            raise StoreError(f"{self.where}: the database driver is missing ({e}). "
                             "Fix: pip install 'psycopg[binary]'") from None  # fmt: skip

    def error(self, e: BaseException, doing: str) -> StoreError:
        """A database failure as a StoreError that names the file or URL and the fix."""
        detail = first_line(e)
        if self.path is not None:
            if "malformed" in detail or "not a database" in detail:
                return self.corrupt(detail)
            return StoreError(
                f"{doing} the store {self.path} failed: {detail}. Fix: check that the file and its folder are writable "
                "and the disk is not full; 'database is locked' means another program holds a long write lock"
            )
        return StoreError(
            f"{doing} the store at {self.where} failed: {detail}. Fix: check that the PostgreSQL server is running "
            "and the host, port, user, password and database name in the URL are right (the database must exist), "
            f"or leave the URL out to use the SQLite store {DEFAULT_DB}"
        )

    @contextmanager
    def reading(self):
        """A read connection; database failures become StoreError."""
        try:
            with self.read.connect() as conn:
                yield conn
        except sa.exc.DBAPIError as e:
            raise self.error(e, "reading") from None

    def dispose(self) -> None:
        self.read.dispose()
        self.write.dispose()


def _sqlite_on_connect(dbapi_conn, record) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN (see _emit_begin)
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("SQLite store: journal_mode is %s, not WAL (a filesystem without shared memory?)", mode)
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _emit_begin(sql: str) -> Callable[[sa.Connection], None]:
    def begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(sql)

    return begin
