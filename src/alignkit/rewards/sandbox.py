"""Run untrusted Python (model completions plus their unit tests) in a throw-away sandbox.

``run_python(source, timeout=..., memory_mb=...)`` runs ``source`` as ``main.py`` and returns a ``SandboxResult``.
It raises ``SandboxUnavailable`` when no sandbox can be made (or the program could not be started): that is an
infrastructure problem, never a wrong answer.

Backends, best first (``sandbox_backend()`` probes them once per interpreter and says which one works):

``bwrap`` (bubblewrap, ``apt-get install bubblewrap``)
    ``--unshare-all --unshare-user``: new user, PID, IPC, UTS, cgroup (where the kernel allows), mount and network
    namespaces. The network namespace has only its own loopback, so no host port (127.0.0.1 included) and no DNS.
    ``--disable-userns``: the program cannot make nested user namespaces (``unshare -U`` fails with ENOSPC).
    ``--clearenv`` plus PATH, HOME=/tmp, LANG, PYTHONDONTWRITEBYTECODE: no secret of the parent's environment.
    The file system is an empty root with read-only binds of /usr and the /bin, /lib* links (plus the
    interpreter's prefix when it lives outside /usr), a private /proc and a minimal /dev; the root and /dev are
    remounted read-only. Home, the repository and /work are never bound. /tmp (the working directory, holding
    only ``main.py``) and /dev/shm are private tmpfs mounts with a size limit (``tmp_mb``).
    ``--die-with-parent``: the sandbox is SIGKILLed if we die; ``--new-session``: no access to our terminal.

``unshare`` (util-linux; used only when bwrap is missing or unusable)
    ``unshare --user --map-root-user --pid --fork --kill-child --net --ipc --uts --mount --mount-proc`` (under
    ``setpriv --pdeathsig KILL``, so it dies with us). Inside, a shell (trusted code, PID 1 of the namespace)
    covers every top-level directory but /usr, /bin, /lib*, /etc, /dev, /proc, /sys with an empty read-only
    tmpfs (home, /work, /var, /run, /opt, ...), mounts size-limited tmpfs on /tmp (the working directory) and
    /dev/shm, sets ``user.max_user_namespaces`` to 0 (no nested user namespaces), and runs the program through
    ``setpriv``, which drops every capability (bounding set included) and sets no_new_privs. The environment is
    the same minimal one. /usr, /etc and /sys stay visible with the permissions of the unprivileged uid: weaker
    than bwrap's empty root, hence the second choice.

``none`` (only with ``allow_unsafe=True``; CLI ``--unsafe-no-sandbox``)
    No namespaces: rlimits, the uid drop, a clean environment and a fresh temporary directory only. It logs a
    warning; a daemonized grandchild can survive it, and without root RLIMIT_NPROC counts all of our processes.
    Without the switch, no sandbox means refusal (fail closed): ``SandboxUnavailable``.

In every backend:

- The program runs as an unprivileged uid (``uid``, default 65534 "nobody") in the initial namespace too: when
  we are root, ``Popen(user=, group=, extra_groups=[])`` drops privileges before bwrap/unshare is executed
  (thread-safe, no ``preexec_fn``), so RLIMIT_NPROC is enforced (the kernel ignores it for root) and the host's
  root-owned files stay out of reach. This needs unprivileged user namespaces (``user.max_user_namespaces`` > 0,
  and ``kernel.unprivileged_userns_clone=1`` on kernels that have that switch).
- rlimits are set by a small trusted launcher inside the sandbox right before it ``exec``s the program (after
  the namespaces exist, so RLIMIT_NPROC counts only this sandbox's processes: the kernel counts processes per
  user namespace and uid, and parallel sandboxes under the same uid do not starve each other):
  RLIMIT_CPU = ceil(timeout) s (SIGXCPU, then SIGKILL one second later) against busy loops;
  RLIMIT_AS = ``memory_mb`` against memory bombs (allocation fails inside the sandbox, not on the host);
  RLIMIT_FSIZE = ``tmp_mb`` against huge files; RLIMIT_NOFILE = 64 against descriptor exhaustion;
  RLIMIT_NPROC = ``max_procs`` against fork bombs (threads count too); RLIMIT_CORE = 0: no core dumps.
- A wall-clock ``timeout`` (also covers sleeping, which uses no CPU) SIGKILLs the sandbox's PID 1, then our
  child's process group. When PID 1 of a PID namespace dies the kernel kills every process in it, so daemonized
  grandchildren and processes that called setsid die too; the call returns only once they are gone. When the
  program exits by itself, PID 1 exits too, with the same effect.
- stdout and stderr are read as they come, ``max_output`` bytes each at most: past that, the sandbox is killed
  and ``truncated`` is set (output is never buffered without bound). stdin is /dev/null (immediate EOF); no
  other descriptor reaches the program (the launcher closes every inherited one).
- The program is ``python -I -B main.py``: isolated mode (no PYTHON* variables, no user site-packages).

Interpreter: ``/usr/bin/python3`` when it exists (readable by any uid; the project's venv interpreter is a pyenv
build under /root, unreadable by the sandbox uid), else ``sys.executable``; set ``ALIGNKIT_SANDBOX_PYTHON`` or
pass ``python=`` to choose another. The sandbox has no site-packages of the venv: stdlib only (plus what the
interpreter's own installation holds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("bwrap", "unshare")
UNSAFE = "none"
DEFAULT_PYTHON = os.environ.get("ALIGNKIT_SANDBOX_PYTHON") or (
    "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
)
SANDBOX_UID = 65534  # nobody
TIMEOUT, MEMORY_MB, MAX_OUTPUT, MAX_PROCS, TMP_MB = 10.0, 512, 1 << 20, 32, 32  # run_python's defaults
NOFILE = 64
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
# The unshare backend leaves these top-level directories visible and covers every other one with an empty tmpfs.
KEEP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "sys", "tmp")

# Trusted code run inside the sandbox: copy the program from an inherited fd into the working directory, tell
# the parent it started (so a failure before this point is the sandbox's, after it the program's), close every
# inherited descriptor but stdin/stdout/stderr, set the rlimits and exec the program.
LAUNCHER = """\
import os, resource as r, sys
src, started, cpu, mem, fsize, nproc, nofile = map(int, sys.argv[1:8])
with open(src, "rb") as f, open("main.py", "wb") as out:
    out.write(f.read())
os.write(started, b"1")
os.closerange(3, 1 << 20)
for lim, soft, hard in ((r.RLIMIT_CPU, cpu, cpu + 1), (r.RLIMIT_AS, mem, mem), (r.RLIMIT_FSIZE, fsize, fsize),
                        (r.RLIMIT_NPROC, nproc, nproc), (r.RLIMIT_NOFILE, nofile, nofile), (r.RLIMIT_CORE, 0, 0)):
    r.setrlimit(lim, (soft, hard))
os.execv(sys.executable, [sys.executable, "-I", "-B", "main.py"])
"""


class SandboxUnavailable(UserError):
    """No sandbox can be made here (or it failed to start the program): an infrastructure error, not a 0 reward."""


@dataclass
class SandboxResult:
    """How a program ended.

    status: ``ok`` (exit code 0), ``error`` (non-zero exit or killed by a signal), ``timeout`` (wall clock or CPU
    limit), ``output_limit`` (stdout or stderr went past ``max_output``; killed). ``returncode`` is negative for
    a signal, as in ``subprocess``.
    """

    status: str
    returncode: int
    stdout: str
    stderr: str
    duration: float
    truncated: bool = False


_probed: dict[tuple[str, str], str | None] = {}  # (backend, python) -> None if it works, else why not
_probe_lock = threading.Lock()
_warned: list[bool] = []


def sandbox_backend(python: str | None = None) -> str:
    """The best working backend (``bwrap`` or ``unshare``) for ``python``; ``SandboxUnavailable`` when none works."""
    python = python or DEFAULT_PYTHON
    reasons = []
    for backend in BACKENDS:
        why = _probe(backend, python)
        if why is None:
            return backend
        reasons.append(f"{backend}: {why}")
    raise SandboxUnavailable(
        f"no sandbox with a network namespace can be made for {python}, so untrusted code is refused "
        f"({'; '.join(reasons)}). Fix: install bubblewrap (apt-get install bubblewrap, or `make venv` as root), "
        "enable unprivileged user namespaces (sysctl user.max_user_namespaces=15000, and "
        "kernel.unprivileged_userns_clone=1 where it exists; on Ubuntu 24.04 also "
        "kernel.apparmor_restrict_unprivileged_userns=0), or accept running without isolation "
        "(allow_unsafe=True / --unsafe-no-sandbox). If only the interpreter fails, choose one every user can read: "
        "/usr/bin/python3 (apt-get install python3) or ALIGNKIT_SANDBOX_PYTHON=/path/to/python3"
    )


def _probe(backend: str, python: str) -> str | None:
    with _probe_lock:
        if (backend, python) not in _probed:
            why = None
            tool = "bwrap" if backend == "bwrap" else "unshare"
            if shutil.which(tool) is None:
                why = f"{tool} is not installed"
            else:
                try:
                    res = _run(backend, "print('ok')", python, TIMEOUT, 256, 1 << 16, MAX_PROCS, TMP_MB, SANDBOX_UID)
                    if res.status != "ok" or res.stdout.strip() != "ok":
                        why = f"the probe program failed ({res.status}: {res.stderr.strip()[-300:]})"
                except SandboxUnavailable as e:
                    why = str(e)
            _probed[backend, python] = why
        return _probed[backend, python]


def run_python(
    source: str,
    *,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_output: int = MAX_OUTPUT,
    max_procs: int = MAX_PROCS,
    tmp_mb: int = TMP_MB,
    python: str | None = None,
    backend: str | None = None,
    allow_unsafe: bool = False,
    uid: int = SANDBOX_UID,
) -> SandboxResult:
    """Run ``source`` as a Python program in a sandbox; see the module docstring for every limit.

    ``backend``: ``bwrap``, ``unshare``, ``none`` (needs ``allow_unsafe``) or None for the best one that works.
    Without a working sandbox this raises ``SandboxUnavailable``, unless ``allow_unsafe`` (then: rlimits only).
    """
    python = python or DEFAULT_PYTHON
    if backend is None:
        try:
            backend = sandbox_backend(python)
        except SandboxUnavailable:
            if not allow_unsafe:
                raise
            backend = UNSAFE
    elif backend == UNSAFE:
        if not allow_unsafe:
            raise SandboxUnavailable("backend 'none' runs untrusted code without isolation. Fix: pass allow_unsafe")
    elif backend in BACKENDS:
        why = _probe(backend, python)
        if why is not None:
            raise SandboxUnavailable(f"the {backend} sandbox does not work here: {why}")
    else:
        raise SandboxUnavailable(f"unknown sandbox backend {backend!r}. Fix: use one of {BACKENDS + (UNSAFE,)}")
    if backend == UNSAFE and not _warned:
        _warned.append(True)  # once per process, not once per program
        log.warning("running untrusted code WITHOUT a sandbox (rlimits only): it can reach the network and files")
    return _run(backend, source, python, timeout, memory_mb, max_output, max_procs, tmp_mb, uid)


def _run(backend, source, python, timeout, memory_mb, max_output, max_procs, tmp_mb, uid) -> SandboxResult:
    src = os.memfd_create("main.py")  # the program travels as an inherited fd: no host file to bind or leak
    os.write(src, source.encode("utf-8", "surrogatepass"))
    os.lseek(src, 0, os.SEEK_SET)
    started_r, started_w = os.pipe()
    info_r, info_w = os.pipe()  # bwrap writes its PID 1's pid and namespace ids here
    limits = [math.ceil(timeout), memory_mb << 20, tmp_mb << 20, max_procs, NOFILE]
    inner = [python, "-I", "-S", "-c", LAUNCHER, str(src), str(started_w), *map(str, limits)]
    as_root = os.geteuid() == 0
    workdir = None
    try:
        if backend == "bwrap":
            cmd, cwd = _bwrap_command(python, inner, tmp_mb, info_w), "/"
        elif backend == "unshare":
            cmd, cwd = _unshare_command(python, inner, tmp_mb), "/"
        else:
            workdir = tempfile.mkdtemp(prefix="alignkit-unsafe-")
            if as_root:
                os.chown(workdir, uid, uid)
            cmd, cwd = inner, workdir
        drop = {"user": uid, "group": uid, "extra_groups": []} if as_root else {}
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=ENV,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(src, started_w, info_w) if backend == "bwrap" else (src, started_w),
                start_new_session=True,
                **drop,
            )
        except OSError as e:
            raise SandboxUnavailable(f"cannot start the {backend} sandbox: {e}") from None
        os.close(started_w)
        os.close(info_w)
        started_w = info_w = -1
        out, err, truncated, timed_out = _collect(proc, t0 + timeout, max_output, backend in BACKENDS)
        if backend == "bwrap":
            _wait_for_pid1(info_r)
        duration = time.monotonic() - t0
        os.set_blocking(started_r, False)
        try:
            started = os.read(started_r, 1) == b"1"
        except BlockingIOError:
            started = False
    finally:
        for fd in (src, started_r, started_w, info_r, info_w):
            if fd >= 0:
                os.close(fd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    rc = proc.returncode
    if backend in BACKENDS and rc > 128:  # bwrap and sh (PID 1) report a signal as 128 + its number
        rc = 128 - rc
    stderr = err.decode("utf-8", "replace")
    if not started:  # the program never ran: whatever happened is the sandbox's fault
        raise SandboxUnavailable(f"the {backend} sandbox could not start the program (exit {rc}): {stderr[-500:]}")
    if truncated:
        status = "output_limit"
    elif timed_out or rc == -signal.SIGXCPU:
        status = "timeout"
    else:
        status = "ok" if rc == 0 else "error"
    return SandboxResult(status, rc, out.decode("utf-8", "replace"), stderr, duration, truncated)


def _collect(proc: subprocess.Popen, deadline: float, cap: int, namespaced: bool) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until EOF (at most ``cap`` bytes each), then wait; kill the group on timeout/overflow."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    truncated = timed_out = False
    with selectors.DefaultSelector() as sel:
        for f in bufs:
            sel.register(f, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                buf += chunk[: cap - len(buf)]
                if len(buf) >= cap:
                    truncated = True
            if truncated:
                break
    if not (timed_out or truncated):
        try:
            proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    out, err = bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr])
    proc.stdout.close()  # before killing: a writer (bwrap, unshare) must get EPIPE, never block on a full pipe
    proc.stderr.close()
    if proc.returncode is None:
        _kill(proc, namespaced)
    return out, err, truncated, timed_out


def _kill(proc: subprocess.Popen, namespaced: bool) -> None:
    """Kill the sandbox and return once nothing of it is left.

    Namespaced backends: SIGKILL the sandbox's PID 1 (our child's child). PID 1 of a PID namespace exits only after
    the kernel has killed every other process in it, and bwrap/unshare exit once they have reaped it, so waiting
    for our child means the sandbox is empty (and no zombie is left to the host's init). The signal goes through
    a pidfd checked to still be our child's child, so a reused pid is never hit. Then, and for the unsafe
    backend, SIGKILL our child's process group (``proc`` is not reaped yet, so its group id cannot be reused).
    """
    if namespaced:
        for pid in _children(proc.pid):
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # already gone
                continue
            try:
                if _ppid(pid) == proc.pid:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # kernel without CONFIG_PROC_CHILDREN: scan /proc
        return [int(p.name) for p in Path("/proc").glob("[0-9]*") if _ppid(int(p.name)) == pid]


def _wait_for_pid1(info_fd: int) -> None:
    """Return once bwrap's PID 1 is gone (so is everything else in its PID namespace).

    bwrap exits as soon as the program (its PID 2) exits, while its PID 1 may still be tearing the namespace
    down. The pid from ``--info-fd`` is trusted only while it still lives in the sandbox's PID namespace.
    """
    os.set_blocking(info_fd, False)
    try:
        info = json.loads(os.read(info_fd, 65536))
        pid, pidns = info["child-pid"], info["pid-namespace"]
    except (OSError, ValueError, KeyError, TypeError):  # bwrap failed before writing it
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone
        return
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{pidns}]":
            select.select([fd], [], [], 10)  # a pidfd is readable once its process has exited
    except OSError:
        pass
    finally:
        os.close(fd)


def _bwrap_command(python: str, inner: list[str], tmp_mb: int, info_fd: int) -> list[str]:
    """The bwrap command line (each option is explained in the module docstring)."""
    size = str(tmp_mb << 20)
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    cmd += ["--hostname", "sandbox", "--info-fd", str(info_fd), "--clearenv"]
    for k, v in ENV.items():
        cmd += ["--setenv", k, v]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    real = Path(os.path.realpath(python))
    if not real.is_relative_to("/usr"):
        prefix = str(real.parent.parent)  # e.g. /opt/python3.11 for /opt/python3.11/bin/python3.11
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm"]
    cmd += ["--size", size, "--tmpfs", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    return cmd + ["--", *inner]


def _unshare_command(python: str, inner: list[str], tmp_mb: int) -> list[str]:
    """The unshare command line and its setup script (module docstring)."""
    keep = set(KEEP) | {Path(os.path.realpath(python)).parts[1]}
    hidden = [shlex.quote(f"/{p}") for p in sorted(os.listdir("/")) if p not in keep and os.path.isdir(f"/{p}")]
    script = ["set -e"]
    script += [f"[ -L {d} ] || mount -t tmpfs -o ro,size=4k,mode=755 none {d}" for d in hidden]
    script += [f"[ ! -d {d} ] || mount -t tmpfs -o size={tmp_mb}m,mode=1777 none {d}" for d in ("/tmp", "/dev/shm")]
    script += ["echo 0 > /proc/sys/user/max_user_namespaces", "cd /tmp"]  # no nested user namespaces
    # Not exec: sh stays PID 1 (which ignores signals it has no handler for), the program is an ordinary process.
    script += ["setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all --no-new-privs -- " + shlex.join(inner)]
    unshare = "unshare --user --map-root-user --pid --fork --kill-child --net --ipc --uts --mount --mount-proc".split()
    # setpriv --pdeathsig: unshare (and so, by --kill-child, the sandbox's PID 1) dies with our thread.
    return ["setpriv", "--pdeathsig", "KILL", "--", *unshare, "--", "/bin/sh", "-c", "\n".join(script)]
