"""A throwaway PostgreSQL server for tests, from the PostgreSQL binaries (``initdb``, ``pg_ctl``).

Fixtures (import them into a test module: ``from pg_server import postgres_server, postgres_url  # noqa: F401``):

- ``postgres_server`` (session): a ``PostgresServer`` on 127.0.0.1 at a free port, trust auth, its data and unix
  socket in a temp folder, stopped and removed at session end. Skips (reason in ``-ra``) when it cannot start.
- ``postgres_url``: an empty database on it per test, as a ``postgresql+psycopg://`` URL (one test database whose
  other connections are ended and whose ``public`` schema is recreated before each test: much faster than CREATE
  DATABASE).

The binaries are looked up in /usr/lib/postgresql/*/bin, then on PATH; as root with apt-get and none found, the
fixture installs the ``postgresql`` package first (``make store-deps`` does the same). initdb refuses to run as
root, so as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile

import pytest


def find_bindir() -> str | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb and pg_ctl, else their folder on PATH."""

    def major(path: str) -> float:
        try:
            return float(path.split(os.sep)[-3])
        except ValueError:
            return 0.0

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major, reverse=True):
        bindir = os.path.dirname(initdb)
        if os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
            return bindir
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=os.path.dirname(initdb)):
        return os.path.dirname(initdb)
    return None


def install_postgresql() -> str:
    """As root with apt-get: install the postgresql package; returns what happened (for a skip reason)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root with apt-get: install it with `sudo apt-get install -y postgresql` (or `make store-deps`)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "postgresql"]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return f"apt-get install postgresql failed: {done.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get install postgresql failed: {e}"
    return "installed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A running server; ``create_database()`` gives a fresh database's URL. ``stop()`` removes everything."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="alignkit-pg-")  # not under pytest's 0700 tmp: the postgres user needs it
        self.data, self.log = os.path.join(self.root, "data"), os.path.join(self.root, "server.log")
        self.user = "postgres"
        self.port = _free_port()
        self._names = itertools.count()
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root and `runuser` is missing: initdb cannot run as root")
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
            self._as = [runuser, "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [*self._as, os.path.join(self.bindir, tool), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> None:
        done = self._run("initdb", "-D", self.data, "-A", "trust", "-U", self.user, "-E", "UTF8", "--locale=C",
                         "--no-sync", "--no-instructions")  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {(done.stderr or done.stdout).strip()[-400:]}")
        # Test-only speed settings: the tests kill clients, never the server.
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")  # fmt: skip
        done = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "30", "start")
        if done.returncode != 0:
            tail = ""
            if os.path.exists(self.log):
                with open(self.log) as f:
                    tail = f.read()[-400:]
            raise RuntimeError(f"pg_ctl start failed: {(done.stderr or done.stdout).strip()[-300:]} {tail}".strip())

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        import psycopg

        name = f"{prefix}{next(self._names)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def empty_database(self, name: str = "alignkit_test") -> str:
        """The URL of database ``name`` (created on first use), emptied: other connections ended, schema recreated."""
        import psycopg

        def connect(dbname: str):
            return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=dbname, autocommit=True)

        with connect("postgres") as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        with connect(name) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self.url(name)

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """A started server, or pytest.skip with the reason."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests: psycopg is not installed (pip install 'psycopg[binary]')")
    bindir = find_bindir()
    if bindir is None:
        what = install_postgresql()
        bindir = find_bindir()
        if bindir is None:
            pytest.skip(f"PostgreSQL tests: no initdb/pg_ctl found in /usr/lib/postgresql/*/bin or on PATH ({what})")
    try:
        server = PostgresServer(bindir)
    except (RuntimeError, OSError, LookupError) as e:
        pytest.skip(f"PostgreSQL tests: cannot prepare a server: {e}")
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        server.stop()
        pytest.skip(f"PostgreSQL tests: cannot start a server with {bindir}: {e}")
    return server


@pytest.fixture(scope="session")
def postgres_server():
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    return postgres_server.empty_database()
