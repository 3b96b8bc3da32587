"""Group commit for ``alignkit.serve.store.api``: one writer thread runs every write of a store.

``submit(fn)`` queues ``fn(conn)`` and blocks. The writer takes everything queued (up to ``batch_max``), runs the
functions in one transaction, commits, and wakes each waiter with its own result. If that transaction fails, it is
rolled back and the requests run again one per transaction, so only the faulty request gets the error; a failure of
the database itself (lost connection, locked file) fails the rest of the batch at once instead of repeating it.
An exception of a ``clean`` type (``NotFound``: raised before the request changed anything) goes to its request
alone and the batch goes on.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import sqlalchemy as sa

_STOP = object()


class _Request:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[sa.Connection], Any]):
        self.fn, self.done, self.result, self.error = fn, threading.Event(), None, None


def environmental(e: BaseException) -> bool:
    """A failure of the database, not of one request (lost connection, locked database): retrying one by one would
    only repeat it. A PostgreSQL deadlock or serialization failure (SQLSTATE 40xxx) is retried."""
    if not isinstance(e, sa.exc.DBAPIError):
        return False
    if str(getattr(e.orig, "sqlstate", "") or "").startswith("40"):
        return False
    return e.connection_invalidated or isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError))


class GroupCommit:
    """The writer thread over ``engine`` (one connection). ``wrap`` turns a request's exception into the one its
    caller gets; ``closed_error`` builds the error for a write after ``close()``."""

    def __init__(self, engine: sa.Engine, wrap: Callable[[BaseException], BaseException],
                 closed_error: Callable[[], BaseException], batch_max: int = 256, clean: tuple = ()):  # fmt: skip
        self.engine, self.wrap, self.closed_error, self.clean = engine, wrap, closed_error, clean
        self.batch_max = max(1, int(batch_max))
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stats = {"batches": 0, "writes": 0, "largest_batch": 0, "retried_batches": 0}
        self._lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="alignkit-store-writer", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return not self.closed and self.thread.is_alive()

    def submit(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run ``fn(conn)`` in the writer's next transaction; returns its result once committed, or raises its error."""
        req = _Request(fn)
        with self._lock:
            if self.closed:
                raise self.closed_error()
            self.queue.put(req)
        while not req.done.wait(1.0):
            if not self.thread.is_alive() and not req.done.is_set():
                raise self.closed_error()
        if req.error is not None:
            raise req.error
        return req.result

    def close(self) -> None:
        """Commit what is queued, then stop the thread. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.queue.put(_STOP)
        self.thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self.queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self.batch_max:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True  # close() was called: commit what came before it, then stop
                    break
                batch.append(nxt)
            self._commit(batch)

    def _transaction(self, batch: list[_Request]) -> list:
        """Each request's (result, clean error); any other exception rolls the whole transaction back."""
        out = []
        with self.engine.begin() as conn:
            for r in batch:
                try:
                    out.append((r.fn(conn), None))
                except self.clean as e:
                    out.append((None, e))
        return out

    def _commit(self, batch: list[_Request]) -> None:
        s = self.stats
        s["batches"] += 1
        s["writes"] += len(batch)
        s["largest_batch"] = max(s["largest_batch"], len(batch))
        try:
            results = self._transaction(batch)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting callers
            if len(batch) == 1 or environmental(e):
                self._fail(batch, self.wrap(e))
                return
        else:
            for r, (result, error) in zip(batch, results):
                r.result, r.error = result, error
                r.done.set()
            return
        s["retried_batches"] += 1
        for i, r in enumerate(batch):  # one per transaction: only the faulty request gets its error
            try:
                r.result, r.error = self._transaction([r])[0]
            except BaseException as e:  # noqa: BLE001
                if environmental(e):
                    self._fail(batch[i:], self.wrap(e))
                    return
                r.error = self.wrap(e)
            r.done.set()

    @staticmethod
    def _fail(batch: list[_Request], error: BaseException) -> None:
        for r in batch:
            r.error = error
            r.done.set()
