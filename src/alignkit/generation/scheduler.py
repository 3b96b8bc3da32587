"""Continuous batching for serving: one thread per loaded model runs ``DecodeBatch`` and admits new requests
between decode steps.

    submit(request) -> waiting queue (bounded: past ``max_waiting`` -> QueueFull with a retry-after estimate)
    -> loop: one prefill forward of at most ``prefill_chunk`` tokens (several short prompts together, or the next
       chunk of one long prompt) -> its requests join the running batch -> one decode step for every running row
       -> finished and cancelled requests leave, their ``on_done`` is called

A long prompt is prefilled a chunk per iteration, so it delays the running streams by one chunk's forward per token
instead of its whole prefill. ``max_rows`` bounds the rows decoded together (1 = batching off: one request at a time,
the baseline ``bench/serve_batching.py`` measures against). A request's tokens depend only on its own prompt,
parameters and seed (its generator is its own), not on what else is in the batch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from alignkit.generation.cache import GrowingCache
from alignkit.generation.decode import DecodeBatch, Request
from alignkit.generation.fast_decode import FastDecoder
from alignkit.generation.params import check_request
from alignkit.generation.ready import ReadySampler
from alignkit.logprobs import unwrap_causal_lm

log = logging.getLogger("alignkit.generation")
OnDone = Callable[[Request], None]


class QueueFull(Exception):
    """The waiting queue is full; ``retry_after``: seconds after which a retry is likely to be admitted."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} requests are waiting for this model. Retry after {retry_after} s")
        self.waiting, self.retry_after = waiting, retry_after


class Scheduler:
    """The decode thread of one model. ``submit`` from any thread; ``on_done(request)`` is called from the decode
    thread when the request finished, was cancelled, or failed (``request.error`` set)."""

    def __init__(self, ready: ReadySampler, max_rows: int = 16, max_waiting: int = 64, prefill_chunk: int = 256):
        if max_rows < 1 or max_waiting < 0 or prefill_chunk < 1:
            raise ValueError(f"max_rows {max_rows}, max_waiting {max_waiting}, prefill_chunk {prefill_chunk}")
        self.ready, self.max_rows, self.max_waiting, self.prefill_chunk = ready, max_rows, max_waiting, prefill_chunk
        self.tok, self.lm = ready.tok, unwrap_causal_lm(ready.model)
        self._waiting: deque[Request] = deque()
        self._done: dict[Request, OnDone | None] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._chunked: tuple[Request, GrowingCache, int] | None = None  # a long prompt being prefilled, its offset
        self._dtype: torch.dtype | None = None
        self._seconds = 2.0  # running mean of a request's seconds in the batch (for retry-after)
        self.running = 0  # rows in the batch (a gauge for /metrics)
        self._thread = threading.Thread(target=self._run, name="alignkit-decode", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: Request, on_done: OnDone | None = None) -> None:
        """Queue ``request``; raises QueueFull when ``max_waiting`` requests already wait."""
        check_request([request.ids], request.params, [request.seed])
        vocab = self.lm.get_input_embeddings().num_embeddings
        if min(request.ids) < 0 or max(request.ids) >= vocab:
            raise ValueError(f"a prompt token id is outside the model's vocabulary of {vocab}")
        if request.on_token is not None:
            request.on_token = _guarded(request, request.on_token)
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(len(self._waiting), self.retry_after())
            self._done[request] = on_done
            self._waiting.append(request)
            self._cond.notify()

    def retry_after(self) -> int:
        """Seconds until a new request is likely to find room: the queue drained at ``max_rows`` per request time."""
        return max(1, math.ceil(self._seconds * (len(self._waiting) / self.max_rows + 1)))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        lm, ready = self.lm, self.ready
        device = next(lm.parameters()).device
        with torch.no_grad(), ready.running():
            dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else lm.dtype
            self._dtype = dtype
            fast = FastDecoder.build(lm, dtype, rows=self.max_rows) if ready.sampler.fast else None
            batch = DecodeBatch(lm, self.tok, ready.sampler.eos_ids, dtype, fast, compact_at=0, trim_padding=True)
            while True:
                with self._cond:
                    while not (self._waiting or batch or self._chunked or self._closed):
                        self._cond.wait()
                    if self._closed:
                        break
                    taken = self._take(len(batch))
                try:
                    self._prefill(batch, taken)
                    if batch:
                        for request in batch.step():
                            self._finish(request)
                    self.running = len(batch)
                except Exception as e:  # noqa: BLE001 - every request in flight hears it; the loop goes on
                    log.exception("decode loop failed; failing %d requests", len(batch) + len(taken))
                    failed = dict.fromkeys([r for r, _ in batch.rows] + taken + [c[0] for c in [self._chunked] if c])
                    self._chunked = None
                    batch = DecodeBatch(lm, self.tok, ready.sampler.eos_ids, dtype, fast, 0, trim_padding=True)
                    for request in failed:
                        request.error = f"{type(e).__name__}: {e}"
                        self._finish(request)
        for request in list(self._waiting):
            request.error = "the server is shutting down"
            self._finish(request)

    def _take(self, rows: int) -> list[Request]:
        """Under the lock: waiting requests to prefill now (FIFO), within the row room and the token budget; a
        head longer than ``prefill_chunk`` starts a chunked prefill instead (returned empty)."""
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            request.finish = ["cancelled"] * request.params.n
            self._finish(request)
        if self._chunked is not None:
            return []
        room = self.max_rows - rows
        taken: list[Request] = []
        tokens = 0
        while self._waiting:
            head = self._waiting[0]
            fits = head.params.n <= room or (rows == 0 and not taken)  # an n > max_rows request runs alone
            if not fits:
                break
            if len(head.ids) > self.prefill_chunk:
                if not taken:
                    self._waiting.popleft()
                    self._chunked = (head, GrowingCache(head.params.max_new_tokens, self._dtype), 0)
                    head.admitted_at = time.perf_counter()
                break
            if taken and tokens + len(head.ids) > self.prefill_chunk:
                break
            taken.append(self._waiting.popleft())
            room -= head.params.n
            tokens += len(head.ids)
        return taken

    def _prefill(self, batch: DecodeBatch, taken: list[Request]) -> None:
        """Prefill ``taken`` together (then admit them), or the next chunk of the long prompt."""
        if taken:
            for request in taken:
                request.admitted_at = time.perf_counter()
            batch.admit(taken, *batch.prefill(taken, max(r.params.max_new_tokens for r in taken)))
            return
        if self._chunked is None:
            return
        request, cache, start = self._chunked
        end = min(len(request.ids), start + self.prefill_chunk)
        ids = torch.tensor([request.ids[start:end]], device=batch.device)
        logits = self.lm(
            input_ids=ids, attention_mask=torch.ones(1, end, dtype=torch.long, device=batch.device),
            position_ids=torch.arange(start, end, device=batch.device)[None], past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1].float()  # fmt: skip
        if end < len(request.ids):
            self._chunked = (request, cache, end)
            return
        self._chunked = None
        if request.cancelled:
            request.finish = ["cancelled"] * request.params.n
            self._finish(request)
            return
        batch.admit([request], logits, cache, torch.ones(1, end, dtype=torch.long, device=batch.device))

    def _finish(self, request: Request) -> None:
        started = request.admitted_at
        if started is not None and request.error is None:
            self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - started)
        on_done = self._done.pop(request, None)
        if on_done is not None:
            try:
                on_done(request)
            except Exception:  # noqa: BLE001 - a caller's callback never stops the loop
                log.exception("on_done callback failed")


def _guarded(request: Request, on_token):
    """``on_token`` that cancels its own request when it raises, instead of failing the whole batch."""

    def hook(k: int, token: int) -> None:
        try:
            on_token(k, token)
        except Exception:  # noqa: BLE001 - the caller's hook failed: only its request stops
            log.exception("on_token callback failed; cancelling its request")
            request.cancel()

    return hook
