"""Running reward functions on a batch: worker processes with per-call timeouts, retries that isolate a bad item,
and the weighted combination into a ``RewardResult``. The contract the functions follow is in
``alignkit.rewards.functions``; the worker processes are ``alignkit.rewards.workers``.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from alignkit.errors import ConfigError, UserError
from alignkit.rewards.functions import RewardSpec, check_rewards, check_unique_names, load_reward_function, portable
from alignkit.rewards.workers import DIED, START_TIMEOUT, Worker, describe_error, stop_workers

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
        check_unique_names(self.specs, "rewards")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"reward workers: {workers!r}. Fix: a number of processes >= 0 (0: in this process)")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"reward chunk_size: {chunk_size!r}. Fix: a number of completions per call >= 1")
        self.workers, self.chunk_size = workers, chunk_size
        self._functions = [
            load_reward_function(s.function) if isinstance(s.function, str) else s.function for s in self.specs
        ]  # loaded here too: a bad spec fails now, in this process
        self._sent = [portable(s.function) for s in self.specs]
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
        self._pool: list[Worker] = []
        self._lock = threading.Lock()
        self._next_id = 0
        weakref.finalize(self, stop_workers, self._pool)

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
                self._pool.append(Worker(self._sent))

    def close(self) -> None:
        """Stop the workers; a later call starts new ones."""
        with self._lock:
            stop_workers(self._pool)

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
                retries = self._settle(batch, task, None, "error", describe_error(e))
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
            self._pool.append(Worker(self._sent))
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
            elif message is DIED:
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

    def _started(self, w: Worker, message: Any) -> None:
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
        what = f"exited with code {code}" if message is DIED else f"did not start within {START_TIMEOUT:.0f} s"
        raise RuntimeError(f"a reward worker process {what} while starting")

    def _drop(self, w: Worker) -> None:
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
