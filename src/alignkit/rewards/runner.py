"""Running reward functions on a batch: worker processes with per-call timeouts, retries that isolate a bad item,
and the weighted combination into a ``RewardResult``. The contract the functions follow is in
``alignkit.rewards.functions``.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from alignkit.errors import ConfigError, UserError
from alignkit.rewards.functions import (
    ContractViolation,
    FunctionSpec,
    RewardSpec,
    _check_unique,
    _portable,
    check_rewards,
    load_reward_function,
)

# --------------------------------------------------------------------------------------------- results

STATUSES = ("scored", "none", "timeout", "error")


@dataclass
class FunctionStats:
    """How one function fared on a batch; ``first_error``: its first error message (exception, contract, crash)."""

    scored: int = 0
    none: int = 0
    timeout: int = 0
    error: int = 0
    first_error: str | None = None


@dataclass
class RewardResult:
    """Rewards of one batch.

    ``rewards[i]``: the weighted sum over the functions that returned a number for item i; None when every
    function returned None for it, or when any function had a timeout or error on it (an infrastructure problem
    masks the whole sample: never train on a partial score). ``per_function[name][i]``: that function's raw value,
    ``status[name][i]``: one of ``STATUSES``; ``stats[name]``: the counts.
    """

    rewards: list[float | None]
    per_function: dict[str, list[float | None]]
    status: dict[str, list[str]]
    stats: dict[str, FunctionStats]

    def metrics(self) -> dict[str, float]:
        """Flat floats: ``rewards/<name>/mean`` and ``/std`` over scored items (absent when none was scored),
        ``/none``, ``/timeouts``, ``/errors`` (counts), and ``rewards/masked`` (items whose reward is None)."""
        out: dict[str, float] = {}
        for name, values in self.per_function.items():
            scored = [v for v, s in zip(values, self.status[name]) if s == "scored"]
            if scored:
                mean = sum(scored) / len(scored)
                out[f"rewards/{name}/mean"] = mean
                out[f"rewards/{name}/std"] = math.sqrt(sum((v - mean) ** 2 for v in scored) / len(scored))
            stats = self.stats[name]
            out[f"rewards/{name}/none"] = float(stats.none)
            out[f"rewards/{name}/timeouts"] = float(stats.timeout)
            out[f"rewards/{name}/errors"] = float(stats.error)
        out["rewards/masked"] = float(sum(r is None for r in self.rewards))
        return out

    def problems(self) -> list[str]:
        """One line per function that had timeouts or errors, e.g. "reward 'code': 3 timeouts, 1 error: ..."."""
        lines = []
        for name, s in self.stats.items():
            parts = [f"{s.timeout} timeout{'s' * (s.timeout != 1)}"] * bool(s.timeout)
            if s.error:
                parts.append(f"{s.error} error{'s' * (s.error != 1)}: {s.first_error}")
            if parts:
                lines.append(f"reward '{name}': {', '.join(parts)}")
        return lines


# --------------------------------------------------------------------------------------------- runner

START_TIMEOUT = 120.0  # seconds a new worker may take to start and import the functions (not part of any call)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class _Task:
    fn: int  # index into the runner's specs
    items: list[int]  # positions in the batch
    solo: bool  # a one-item call: no retry after a failure
    id: int = 0


@dataclass
class _Batch:
    prompts: list
    completions: list
    columns: dict[str, list]
    values: list[list[float | None]]
    status: list[list[str]]
    first_error: list[str | None] = field(default_factory=list)

    def args(self, task: _Task) -> tuple[list, list, dict[str, list]]:
        pick = lambda seq: [seq[i] for i in task.items]
        return pick(self.prompts), pick(self.completions), {k: pick(v) for k, v in self.columns.items()}


class RewardRunner:
    """Run reward functions on batches in worker processes, with a per-call timeout; combine them by weight.

    ``runner(prompts, completions, columns) -> RewardResult``. The batch is split in chunks of ``chunk_size``
    (per function) spread over ``workers`` processes. A call that does not answer within its spec's ``timeout``
    is abandoned and its worker killed (with its process group) and replaced. A chunk that times out, raises,
    breaks the contract or kills its worker is retried once item by item (each call with the timeout, in parallel
    across workers), so one bad item does not cost the others their rewards; items that fail alone count as a
    ``timeout`` or ``error`` for that function and their combined reward is None. Worst case, a call takes
    ``timeout`` for the chunk plus ``timeout`` per failing item divided over the workers.

    Workers use the ``spawn`` start method (no copy of the trainer's CUDA or thread state), start lazily on the
    first call (or ``start()``), are reused across calls, run with ``OMP_NUM_THREADS=1`` and import the functions
    once at start-up (start-up time never counts against a timeout). A spawned worker re-imports the parent's main
    script, so a script that builds a runner must guard its entry point with ``if __name__ == "__main__":``.
    No worker outlives the runner: ``close()`` (or ``with RewardRunner(...) as runner:``), garbage collection and
    interpreter exit stop them, and a worker whose parent dies kills itself (parent-death signal, and a thread
    that watches the parent).

    ``workers=0`` runs the functions in this process, without timeouts (a hang hangs the caller; a crash takes it
    down): for debugging and for functions that cannot be pickled (lambdas, closures). Retries and error
    accounting are the same.
    """

    def __init__(self, specs: list[RewardSpec | str | Mapping], workers: int = 2, chunk_size: int = 16):
        self.specs = [
            s if isinstance(s, RewardSpec) else RewardSpec.from_config(s, f"rewards[{i}]") for i, s in enumerate(specs)
        ]
        if not self.specs:
            raise ConfigError("rewards: no reward function. Fix: give at least one, e.g. rewards: [math]")
        _check_unique(self.specs, "rewards")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"reward workers: {workers!r}. Fix: a number of processes >= 0 (0: in this process)")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"reward chunk_size: {chunk_size!r}. Fix: a number of completions per call >= 1")
        self.workers, self.chunk_size = workers, chunk_size
        self._functions = [
            load_reward_function(s.function) if isinstance(s.function, str) else s.function for s in self.specs
        ]  # loaded here too: a bad spec fails now, in this process
        self._sent = [_portable(s.function) for s in self.specs]
        if workers:
            for spec, fn in zip(self.specs, self._sent):
                if callable(fn):
                    try:
                        pickle.dumps(fn)
                    except Exception as e:
                        raise ConfigError(
                            f"reward function '{spec.name}' cannot be sent to worker processes ({e}). "
                            "Fix: define it at module level and name it module:function, or use workers=0"
                        ) from None
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._next_id = 0
        weakref.finalize(self, _stop_workers, self._pool)

    # ------------------------------------------------------------------ public

    def __call__(
        self, prompts: list, completions: list[str], columns: Mapping[str, list] | None = None
    ) -> RewardResult:
        """Rewards for ``completions`` (aligned with ``prompts`` and each column); see ``RewardResult``."""
        n = len(prompts)
        if len(completions) != n:
            raise ValueError(f"{len(completions)} completions for {n} prompts")
        columns = {k: list(v) for k, v in (columns or {}).items()}
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column '{key}' has {len(values)} values for {n} prompts")
        k = len(self.specs)
        batch = _Batch(
            list(prompts),
            list(completions),
            columns,
            [[None] * n for _ in range(k)],
            [["error"] * n for _ in range(k)],
            [None] * k,
        )
        tasks = [
            _Task(f, list(range(a, min(a + self.chunk_size, n))), solo=min(self.chunk_size, n - a) == 1)
            for a in range(0, n, self.chunk_size)
            for f in range(k)
        ]
        with self._lock:
            if self.workers == 0:
                self._run_inline(batch, tasks)
            else:
                self._run_pool(batch, tasks)
        return self._result(batch)

    def start(self) -> None:
        """Start the workers now (in the background) instead of on the first call."""
        with self._lock:
            while len(self._pool) < self.workers:
                self._pool.append(_Worker(self._sent))

    def close(self) -> None:
        """Stop the workers; a later call starts new ones."""
        with self._lock:
            _stop_workers(self._pool)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._pool]

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ running

    def _settle(self, batch: _Batch, task: _Task, values: list | None, kind: str = "", message: str = "") -> list:
        """Record a call's outcome (``values``, or a failure ``kind`` timeout/error); returns retries, if any."""
        if values is not None:
            for i, v in zip(task.items, values):
                batch.values[task.fn][i] = v
                batch.status[task.fn][i] = "none" if v is None else "scored"
            return []
        if not task.solo:
            return [_Task(task.fn, [i], solo=True) for i in task.items]
        for i in task.items:
            batch.status[task.fn][i] = kind
        if kind == "error" and batch.first_error[task.fn] is None:
            batch.first_error[task.fn] = message
        return []

    def _run_inline(self, batch: _Batch, tasks: list[_Task]) -> None:
        queue = deque(tasks)
        while queue:
            task = queue.popleft()
            prompts, completions, columns = batch.args(task)
            try:
                values = self._functions[task.fn](prompts, completions, **columns)
                retries = self._settle(batch, task, check_rewards(values, len(task.items), self.specs[task.fn].name))
            except Exception as e:
                retries = self._settle(batch, task, None, "error", _describe(e))
            queue.extendleft(reversed(retries))

    def _run_pool(self, batch: _Batch, tasks: list[_Task]) -> None:
        queue = deque(tasks)
        try:
            while queue or any(w.task for w in self._pool):
                self._dispatch(batch, queue)
                self._collect(batch, queue)
        except BaseException:  # an interrupt or a start-up failure: leave no worker running an abandoned call
            for w in [w for w in self._pool if w.task is not None or not w.ready]:
                self._drop(w)
            raise

    def _dispatch(self, batch: _Batch, queue: deque) -> None:
        for w in list(self._pool):
            if queue and w.ready and w.task is None:
                task = queue.popleft()
                self._next_id += 1
                task.id = self._next_id
                name = self.specs[task.fn].name
                if not w.send(task, (task.id, task.fn, name, *batch.args(task)), self.specs[task.fn].timeout):
                    self._drop(w)  # it died while idle: not the task's fault
                    queue.appendleft(task)
        starting = sum(not w.ready for w in self._pool)
        while len(self._pool) < self.workers and len(queue) > starting:
            self._pool.append(_Worker(self._sent))
            starting += 1

    def _collect(self, batch: _Batch, queue: deque) -> None:
        waiting = [w for w in self._pool if w.task is not None or not w.ready]
        if not waiting:
            return
        timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        ready = set(wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting], timeout))
        for w in waiting:
            message = w.receive() if w.conn in ready or w.process.sentinel in ready else None
            if message is None and time.monotonic() < w.deadline:
                continue
            if not w.ready:
                self._started(w, message)
                continue
            task = w.task
            if message is None:  # deadline passed
                self._drop(w)
                retries = self._settle(batch, task, None, "timeout")
            elif message is _DIED:
                code = w.process.exitcode
                self._drop(w)
                retries = self._settle(batch, task, None, "error", f"the worker process died (exit code {code})")
            else:
                task_id, values, error = message
                if task_id != task.id:
                    continue  # cannot happen (a worker with an abandoned call is killed); ignore to be safe
                w.task = None
                retries = self._settle(batch, task, values, "error", error or "")
            queue.extendleft(reversed(retries))

    def _started(self, w: _Worker, message: Any) -> None:
        if isinstance(message, tuple) and message[0] == "ready":
            w.ready, w.deadline = True, math.inf
            return
        code = w.process.exitcode
        self._drop(w)
        if isinstance(message, tuple) and message[0] == "load_error":
            raise UserError(
                f"a reward worker process could not load the reward functions: {message[1]}. Fix: make the "
                "module importable from a fresh Python process (not defined in a notebook), or use workers=0"
            )
        what = f"exited with code {code}" if message is _DIED else f"did not start within {START_TIMEOUT:.0f} s"
        raise RuntimeError(f"a reward worker process {what} while starting")

    def _drop(self, w: _Worker) -> None:
        w.kill()
        if w in self._pool:
            self._pool.remove(w)

    def _result(self, batch: _Batch) -> RewardResult:
        names = [s.name for s in self.specs]
        stats = {}
        for f, name in enumerate(names):
            counts = {s: batch.status[f].count(s) for s in STATUSES}
            stats[name] = FunctionStats(**counts, first_error=batch.first_error[f])
        rewards: list[float | None] = []
        for i in range(len(batch.prompts)):
            statuses = [batch.status[f][i] for f in range(len(names))]
            masked = any(s in ("timeout", "error") for s in statuses) or all(s == "none" for s in statuses)
            scored = [spec.weight * batch.values[f][i] for f, spec in enumerate(self.specs) if statuses[f] == "scored"]
            rewards.append(None if masked else sum(scored))
        return RewardResult(
            rewards,
            {name: batch.values[f] for f, name in enumerate(names)},
            {name: batch.status[f] for f, name in enumerate(names)},
            stats,
        )


def _describe(e: BaseException) -> str:
    if isinstance(e, ContractViolation):
        return f"contract violation: {e}"
    return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------------- workers

_DIED = object()  # what a worker "says" when it is gone
_LIVE: set[_Worker] = set()  # every started, not yet killed worker of this process
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


class _Worker:
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

    def send(self, task: _Task, message: tuple, timeout: float) -> bool:
        try:
            self.conn.send(message)
        except (OSError, EOFError, ValueError):
            return False
        self.task, self.deadline = task, time.monotonic() + timeout
        return True

    def receive(self) -> Any:
        """The worker's next message; ``_DIED`` if it is gone; None if nothing came."""
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            return _DIED
        return _DIED if self.process.exitcode is not None else None

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


def _stop_workers(pool: list[_Worker]) -> None:
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
    _stop_workers(list(_LIVE))


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
        conn.send(("load_error", _describe(e)))
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
            conn.send((task_id, None, _describe(e)))


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
