"""Containment of ``alignkit.rewards.sandbox``: every attack runs on each backend that works on this machine.

Each case is bounded by the sandbox's own timeout (at most a few seconds); no case relies on pytest timeouts.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

import alignkit.rewards.sandbox as sb
from alignkit.rewards.sandbox import SandboxUnavailable, run_python, sandbox_backend
from alignkit.rewards.verifiers.code import verify_code

REPO = Path(__file__).resolve().parents[1]


def _why_not(backend: str) -> str | None:
    return sb._probe(backend, sb.DEFAULT_PYTHON)


@pytest.fixture(params=sb.BACKENDS)
def backend(request):
    why = _why_not(request.param)
    if why is not None:
        pytest.skip(f"the {request.param} sandbox does not work on this machine: {why}")
    return request.param


def tagged(body: str) -> tuple[str, str]:
    """A program that re-executes itself with a unique tag in its argv (so its processes can be found), then
    runs ``body``; and the tag."""
    tag = f"sbxtag{secrets.token_hex(8)}"
    head = (
        f"import os, sys\nif sys.argv[-1] != {tag!r}:\n"
        f"    os.execv(sys.executable, [sys.executable, __file__, {tag!r}])\n"
    )
    return head + textwrap.dedent(body), tag


def live(tag: str) -> list[psutil.Process]:
    """Processes (not zombies) on the host whose command line holds ``tag``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(tag in a for a in p.info["cmdline"] or ()):
            found.append(p)
    return found


def run(source: str, backend: str, **kw):
    kw.setdefault("timeout", 5)
    return run_python(textwrap.dedent(source), backend=backend, **kw)


# ------------------------------------------------------------------------------------------- CPU, time, processes


def test_busy_loop_times_out(backend):
    res = run("while True:\n    pass\n", backend, timeout=1)
    assert res.status == "timeout"
    assert res.duration < 4
    # The CPU limit on its own (lowered by the program below the wall clock): SIGXCPU, also a timeout.
    res = run("import resource as r\nr.setrlimit(r.RLIMIT_CPU, (1, 2))\nwhile True:\n    pass\n", backend, timeout=8)
    assert (res.status, res.returncode) == ("timeout", -signal.SIGXCPU)
    assert res.duration < 4


def test_sleep_forever_times_out_and_nothing_survives(backend):
    source, tag = tagged("import time\ntime.sleep(10 ** 6)\n")
    res = run(source, backend, timeout=1)
    assert res.status == "timeout"
    assert live(tag) == []


def test_fork_bomb_is_contained(backend):
    source, tag = tagged(
        """
        import errno, time
        while True:
            try:
                pid = os.fork()
            except OSError as e:
                print("fork refused", errno.errorcode[e.errno], flush=True)
                break
            if pid == 0:
                while True:
                    try:
                        os.fork()
                    except OSError:
                        time.sleep(0.01)
        time.sleep(60)
        """
    )
    out = {}
    bomb = threading.Thread(target=lambda: out.setdefault("res", run(source, backend, timeout=3, max_procs=48)))
    bomb.start()
    time.sleep(1)
    # Meanwhile, under the same uid and a lower limit: counted apart (per user namespace), it still forks.
    during = run("import subprocess\nprint(subprocess.run(['true']).returncode)\n", backend, max_procs=8)
    bomb.join()
    assert during.status == "ok" and during.stdout.strip() == "0"  # the host (and other sandboxes) still fork
    assert "fork refused EAGAIN" in out["res"].stdout  # RLIMIT_NPROC hit: the bomb did not grow without bound
    assert out["res"].status == "timeout"
    assert live(tag) == []


def test_daemonized_grandchild_does_not_survive(backend):
    source, tag = tagged(
        """
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.close(1)
                os.close(2)
                time.sleep(10 ** 6)
            os._exit(0)
        os.wait()
        print("parent done", flush=True)
        """
    )
    res = run(source, backend, timeout=5)
    assert res.status == "ok" and "parent done" in res.stdout
    assert res.duration < 4  # returned when the program exited, not at the timeout
    assert live(tag) == []


def test_runs_as_unprivileged_uid_with_rlimits(backend):
    source, tag = tagged(
        """
        import resource as r, time
        for name in ("CPU", "AS", "FSIZE", "NOFILE", "NPROC", "CORE"):
            print(name, *r.getrlimit(getattr(r, "RLIMIT_" + name)))
        print("uid_map", open("/proc/self/uid_map").read().split(), flush=True)
        time.sleep(1.5)
        """
    )
    out = {}
    thread = threading.Thread(
        target=lambda: out.setdefault("res", run(source, backend, timeout=2.5, memory_mb=300, max_procs=20))
    )
    thread.start()
    seen = []
    for _ in range(100):
        seen = live(tag)
        if seen:
            break
        time.sleep(0.02)
    host_uids = {p.uids().real for p in seen}
    thread.join()
    if os.geteuid() == 0:
        assert host_uids == {sb.SANDBOX_UID}  # in the host's namespace, not root: RLIMIT_NPROC applies
    lines = dict(line.split(" ", 1) for line in out["res"].stdout.splitlines())
    assert lines["CPU"] == "3 4" and lines["AS"] == f"{300 << 20} {300 << 20}"
    assert lines["NPROC"] == "20 20" and lines["CORE"] == "0 0" and lines["NOFILE"] == f"{sb.NOFILE} {sb.NOFILE}"
    assert lines["FSIZE"].split()[0] == str(32 << 20)


# ------------------------------------------------------------------------------------------- memory, disk, output


def test_memory_bomb_fails_inside(backend):
    res = run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n", backend, memory_mb=256)
    assert res.status == "error"
    assert "MemoryError" in res.stderr


def test_disk_bomb_is_capped(backend):
    res = run(
        """
        block = b"x" * (1 << 20)
        try:
            with open("big", "wb") as f:
                while True:
                    f.write(block)
        except OSError as e:
            print("refused", e.errno)
        """,
        backend,
        tmp_mb=8,
    )
    assert res.status == "ok" and "refused" in res.stdout


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_unbounded_output_is_capped(backend, stream):
    res = run(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 4096)\n", backend, max_output=100_000)
    assert res.status == "output_limit" and res.truncated
    assert len(res.stdout) <= 100_000 and len(res.stderr) <= 100_000
    assert res.duration < 4


def test_closing_stdout_then_continuing(backend):
    res = run("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(0.5)\nos._exit(0)\n", backend)
    assert res.status == "ok" and res.duration >= 0.5  # waited for the exit, not for EOF on the pipes
    res = run("import os, time\nos.close(1)\ntime.sleep(10 ** 6)\n", backend, timeout=1)
    assert res.status == "timeout"


def test_stdin_is_empty(backend):
    res = run("import sys\nprint(repr(sys.stdin.read()))\n", backend)
    assert res.status == "ok" and res.stdout.strip() == "''"


def test_only_the_standard_descriptors_are_open(backend):
    res = run("import os\nprint(sorted(os.listdir('/proc/self/fd')))\n", backend)
    assert res.stdout.strip() == "['0', '1', '2', '3']"  # 3: the directory being listed


# ------------------------------------------------------------------------------------------- files


@pytest.fixture
def canary():
    """A file the sandbox uid could delete by permissions alone (world-writable dir under the host's /tmp)."""
    d = Path(tempfile.mkdtemp(prefix="alignkit-canary-", dir="/tmp"))
    d.chmod(0o777)
    f = d / "canary.txt"
    f.write_text("alive")
    f.chmod(0o666)
    yield f
    f.unlink(missing_ok=True)
    d.rmdir()


def test_cannot_delete_a_file_outside(backend, canary):
    res = run(
        f"""
        import os, shutil
        for attempt in (lambda: os.remove({str(canary)!r}), lambda: shutil.rmtree({str(canary.parent)!r})):
            try:
                attempt()
                print("deleted")
            except OSError as e:
                print("refused", e.errno)
        """,
        backend,
    )
    assert res.status == "ok" and "deleted" not in res.stdout
    assert canary.read_text() == "alive"


def test_the_canary_check_bites_without_a_sandbox(canary):
    """Permissions alone would let the program delete the canary: the namespaces are what protect it."""
    res = run_python(f"import os\nos.remove({str(canary)!r})", timeout=5, backend="none", allow_unsafe=True)
    assert res.status == "ok" and not canary.exists()


def test_writes_outside_its_directory_do_not_reach_the_host(backend):
    name = f"alignkit-escape-{secrets.token_hex(6)}"
    targets = [f"{d}/{name}" for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", str(REPO), "/work", "/root")]
    res = run(
        f"""
        for path in {targets!r}:
            try:
                open(path, "w").write("escaped")
            except OSError as e:
                print("refused", path, e.errno)
        """,
        backend,
    )
    assert res.status == "ok"
    assert [t for t in targets if os.path.exists(t)] == []


def test_home_and_repository_are_not_readable(backend):
    res = run(
        f"""
        import os
        for path in ("/root", os.path.expanduser("~root"), {str(REPO)!r}, "/work"):
            try:
                print(path, os.listdir(path))
            except OSError as e:
                print(path, "refused", e.errno)
        for path in ("/root/.bashrc", {str(REPO / "pyproject.toml")!r}, "/etc/shadow"):
            try:
                print(path, "read", len(open(path).read()))
            except OSError as e:
                print(path, "refused", e.errno)
        """,
        backend,
    )
    assert res.status == "ok"
    for line in res.stdout.splitlines():
        assert "refused" in line or line.endswith(" []"), line  # absent, unreadable or an empty cover


def test_environment_secrets_are_not_visible(backend, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2-do-not-leak")
    res = run(
        """
        import os
        print(dict(os.environ))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(open(f"/proc/{pid}/environ", "rb").read())
                except OSError:
                    pass
        """,
        backend,
    )
    assert res.status == "ok" and "HOME" in res.stdout
    assert "hunter2" not in res.stdout and "SECRET_TOKEN" not in res.stdout


# ------------------------------------------------------------------------------------------- network, namespaces


def test_no_connection_to_a_host_listener(backend):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        res = run(
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                print("connected")
            except OSError as e:
                print("refused", e.errno)
            """,
            backend,
        )
        with pytest.raises(BlockingIOError):
            server.accept()
    assert res.status == "ok" and "connected" not in res.stdout


def test_no_dns(backend):
    res = run(
        """
        import socket
        try:
            print(socket.getaddrinfo("pypi.org", 443))
        except OSError as e:
            print("refused", e)
        """,
        backend,
    )
    assert res.status == "ok" and res.stdout.startswith("refused")


def test_nested_user_namespaces_are_refused(backend):
    res = run(
        """
        import ctypes, subprocess
        print(subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode)
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER
        """,
        backend,
    )
    assert res.status == "ok"
    assert res.stdout.split() == ["1", "-1", "28"]  # ENOSPC: the namespace limit inside is 0


# ------------------------------------------------------------------------------------------- the verifier


@pytest.mark.parametrize("hack", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "quit()", "raise SystemExit"])
def test_exit_zero_before_the_asserts_fails(backend, hack):
    completion = f"def add(a, b):\n    return a - b\n{hack}\n"
    res = verify_code(completion, "assert add(1, 2) == 3\n", backend=backend)
    assert (res.status, res.reward) == ("fail", 0.0)


def test_the_verifier_still_answers_after_the_attacks(backend):
    tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
    assert verify_code("def add(a, b):\n    return a + b\n", tests, backend=backend).status == "pass"
    assert verify_code("def add(a, b):\n    return a * b\n", tests, backend=backend).status == "fail"


# ------------------------------------------------------------------------------------------- choosing a backend


def test_falls_back_to_unshare_without_bwrap(monkeypatch):
    if _why_not("unshare") is not None:
        pytest.skip(f"the unshare sandbox does not work on this machine: {_why_not('unshare')}")
    which = sb.shutil.which
    monkeypatch.setattr(sb.shutil, "which", lambda tool: None if tool == "bwrap" else which(tool))
    monkeypatch.setattr(sb, "_probed", {})
    assert sandbox_backend() == "unshare"
    assert run_python("print(6 * 7)", timeout=5).stdout.strip() == "42"


def test_fails_closed_without_a_network_namespace(monkeypatch, caplog):
    monkeypatch.setattr(sb, "_probe", lambda backend, python: "cannot create a network namespace (simulated)")
    monkeypatch.setattr(sb, "_warned", [])
    with pytest.raises(SandboxUnavailable, match="refused"):
        sandbox_backend()
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)", timeout=5)
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)", timeout=5, backend="none")
    res = verify_code("def f():\n    return 1\n", "assert f() == 1\n")
    assert (res.status, res.reward) == ("infra_error", None)

    with caplog.at_level(logging.WARNING, logger=sb.__name__):
        res = run_python(
            "import os, resource\nprint(os.getuid(), resource.getrlimit(resource.RLIMIT_NPROC)[0])",
            timeout=5,
            max_procs=20,
            allow_unsafe=True,
        )
    assert "WITHOUT a sandbox" in caplog.text
    uid, nproc = res.stdout.split()
    assert res.status == "ok" and nproc == "20"
    assert int(uid) == (sb.SANDBOX_UID if os.geteuid() == 0 else os.geteuid())


def test_unknown_backend_and_unusable_interpreter():
    with pytest.raises(SandboxUnavailable, match="unknown sandbox backend"):
        run_python("print(1)", timeout=5, backend="docker")
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)", timeout=5, python="/nonexistent/python3")
