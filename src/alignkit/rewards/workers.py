"""Worker processes of the reward runner (``alignkit.rewards.runner``): spawned with one thread each, in their own
process group (killing the group also kills what a function started), dying with their parent; each loads the
reward functions once, then answers calls until told to stop."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any

from alignkit.rewards.functions import ContractViolation, FunctionSpec, check_rewards, load_reward_function

START_TIMEOUT = 120.0  # seconds a new worker may take to start and import the functions (not part of any call)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def describe_error(e: BaseException) -> str:
    if isinstance(e, ContractViolation):
        return f"contract violation: {e}"
    return f"{type(e).__name__}: {e}"


DIED = object()  # what a worker "says" when it is gone
_LIVE: set[Worker] = set()  # every started, not yet killed worker of this process
_ENV_LOCK = threading.Lock()


@contextmanager
def _one_thread_env():
    """``OMP_NUM_THREADS=1`` (and MKL/OpenBLAS) in the environment a spawned child copies at start.

    Set here rather than in the child: the child's start-up (re-importing the main module) may already load a
    threaded library, which reads these once.
    """
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update({k: "1" for k in _THREAD_VARS})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class Worker:
    """One worker process and this side of its pipe. ``task``: the call it runs; ``deadline``: when it is late."""

    def __init__(self, functions: list[FunctionSpec]):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        main = threading.current_thread() is threading.main_thread()  # the parent-death signal follows this thread
        self.process = ctx.Process(
            target=_worker_main, args=(child, functions, os.getpid(), main), name="alignkit-reward-worker"
        )
        with _one_thread_env():
            self.process.start()
        child.close()
        _LIVE.add(self)
        self.ready, self.task = False, None
        self.deadline = time.monotonic() + START_TIMEOUT

    def send(self, task: Any, message: tuple, timeout: float) -> bool:
        try:
            self.conn.send(message)
        except (OSError, EOFError, ValueError):
            return False
        self.task, self.deadline = task, time.monotonic() + timeout
        return True

    def receive(self) -> Any:
        """The worker's next message; ``DIED`` if it is gone; None if nothing came."""
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            return DIED
        return DIED if self.process.exitcode is not None else None

    def kill(self) -> None:
        """SIGKILL the worker's process group (the worker and what it started), then reap it."""
        for kill in (lambda: os.killpg(self.process.pid, signal.SIGKILL), self.process.kill):
            try:
                kill()
            except (OSError, ValueError, AttributeError):
                pass
        self.process.join(5)
        self.conn.close()
        _LIVE.discard(self)


def stop_workers(pool: list[Worker]) -> None:
    """Ask idle workers to exit, give them a second, then kill what is left (always their process groups)."""
    for w in pool:
        if w.task is None:  # a starting worker reads it once it has loaded the functions
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + 1.0
    for w in pool:
        w.process.join(max(0.0, deadline - time.monotonic()))
    for w in pool:
        w.kill()
    pool.clear()


def _stop_live_workers() -> None:
    stop_workers(list(_LIVE))


# At interpreter exit: a multiprocessing finalizer runs inside multiprocessing's exit hook before it waits for
# (non-daemon) children, whatever the order of atexit hooks.
multiprocessing.util.Finalize(None, _stop_live_workers, exitpriority=100)


def _worker_main(conn, functions: list[FunctionSpec], parent: int, die_with_parent: bool) -> None:
    """A worker: load the functions, then answer ``(id, fn, name, prompts, completions, columns)`` calls with
    ``(id, values, None)`` or ``(id, None, error message)`` until told to stop (None) or the pipe closes."""
    os.setpgrp()  # its own process group: killing the group also kills what a function started
    if die_with_parent:
        _set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        loaded = [load_reward_function(f) if isinstance(f, str) else f for f in functions]
    except BaseException as e:
        conn.send(("load_error", describe_error(e)))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, fn, name, prompts, completions, columns = message
        try:
            conn.send((task_id, check_rewards(loaded[fn](prompts, completions, **columns), len(prompts), name), None))
        except BaseException as e:  # SystemExit too: the call failed, the worker goes on
            conn.send((task_id, None, describe_error(e)))


def _set_parent_death_signal() -> None:
    """Linux: the kernel SIGKILLs this process when its parent dies (even while a function holds the GIL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(os.getpgrp(), signal.SIGKILL)
