"""`alignkit serve` as a child process (the loop demo, tests, benchmarks): start it on a free loopback port, wait
until it answers, stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log_path: str | Path, timeout: float, path: str = "/health") -> None:
    """Return once GET ``url + path`` answers 200; RuntimeError (with the log's tail) when ``proc`` exits first or
    ``timeout`` seconds pass."""
    import httpx2 as httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout}s:\n{Path(log_path).read_text()[-3000:]}")


@contextmanager
def serve_process(args: list[str], log_path, timeout: float = 90.0, env: dict | None = None, procs: list | None = None):
    """`python -m alignkit serve ARGS --port P` -> yields the base URL once /health is 200; stopped at the end
    (SIGTERM, then SIGKILL after 10 s). ``procs``: the process is appended to it (for a caller that kills it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "alignkit", "serve", *args, "--port", str(port)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if procs is not None:
        procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
