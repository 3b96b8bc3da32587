"""The continuous-batching scheduler: requests joining a running batch get exactly the tokens (and log-probs) that
unbatched sampling gives with the same seeds, whatever else is decoded beside them; long prompts are prefilled in
chunks; cancellation (waiting and running), the bounded queue, failures that stay with their request."""

from __future__ import annotations

import threading
import time

import pytest

from alignkit.data import Tokenizer
from alignkit.generation import ready_sampler
from alignkit.generation.decode import DecodeBatch, Request
from alignkit.generation.params import SamplingParams
from alignkit.generation.scheduler import QueueFull, Scheduler


@pytest.fixture(scope="module")
def ready():
    from helpers import make_word_tokenizer
    from test_sampler import chatty_model

    return ready_sampler(chatty_model(), Tokenizer(make_word_tokenizer()), "fp32")


def ids_of(ready, text: str) -> list[int]:
    return ready.sampler.prompt_ids(text)


def run_all(scheduler: Scheduler, requests: list[Request], gap: float = 0.0, timeout: float = 60) -> None:
    done = threading.Semaphore(0)
    for r in requests:
        scheduler.submit(r, lambda _: done.release())
        time.sleep(gap)
    for _ in requests:
        assert done.acquire(timeout=timeout), "a request never finished"


def long_seed(ready, ids: list[int], tokens: int = 60) -> int:
    """A seed with which the random test model samples at least ``tokens`` tokens before its EOS."""
    params = SamplingParams(max_new_tokens=tokens, temperature=1.0)
    return next(s for s in range(200) if len(ready.sample([ids], params, [s])[0][0].token_ids) == tokens)


PARAMS = [
    SamplingParams(max_new_tokens=12, temperature=0),
    SamplingParams(max_new_tokens=20, temperature=1.0),
    SamplingParams(n=3, max_new_tokens=9, temperature=0.8, top_p=0.9),
    SamplingParams(max_new_tokens=15, temperature=1.2, top_k=5),
    SamplingParams(max_new_tokens=30, temperature=1.0, stop=("joke",)),
    SamplingParams(n=2, max_new_tokens=6, temperature=0.5, min_p=0.1),
]
TEXTS = ["hi", "tell me a joke", "how is the weather today ?", "hi " * 60, "tell me", "the weather"]


@pytest.mark.parametrize("max_rows", [1, 4, 16])
def test_batched_tokens_equal_unbatched_sampling(ready, max_rows):
    prompts = [ids_of(ready, t) for t in TEXTS]
    assert len(prompts[3]) > 32  # prefilled in chunks of 32 below
    expected = [ready.sample([p], params, [7 + i])[0] for i, (p, params) in enumerate(zip(prompts, PARAMS))]
    scheduler = Scheduler(ready, max_rows=max_rows, prefill_chunk=32)
    try:
        requests = [Request(p, params, 7 + i) for i, (p, params) in enumerate(zip(prompts, PARAMS))]
        run_all(scheduler, requests, gap=0.01)  # staggered: later requests join a running batch
    finally:
        scheduler.close()
    for request, want in zip(requests, expected):
        got = request.completions(ready.tok)
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
        assert [c.text for c in got] == [c.text for c in want]
        for g, w in zip(got, want):
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)


def test_requests_join_a_running_batch(ready):
    """A request submitted while another decodes starts before that one ends (continuous batching), and the
    one-row scheduler (batching off) runs them one after the other."""
    for max_rows, overlaps in ((8, True), (1, False)):
        scheduler = Scheduler(ready, max_rows=max_rows)
        ended: dict[int, float] = {}
        seed = long_seed(ready, ids_of(ready, "hi"))
        long = Request(ids_of(ready, "hi"), SamplingParams(max_new_tokens=60, temperature=1.0), seed)
        short = Request(ids_of(ready, "tell me"), SamplingParams(max_new_tokens=3, temperature=1.0), 2)
        try:
            done = threading.Semaphore(0)
            scheduler.submit(long, lambda r, e=ended, d=done: (e.__setitem__(1, time.perf_counter()), d.release()))
            while long.first_token_at is None:
                time.sleep(0.001)
            scheduler.submit(short, lambda r, e=ended, d=done: (e.__setitem__(2, time.perf_counter()), d.release()))
            assert done.acquire(timeout=60) and done.acquire(timeout=60)
        finally:
            scheduler.close()
        assert (short.first_token_at < ended[1]) is overlaps


def test_cancel_a_waiting_and_a_running_request(ready):
    scheduler = Scheduler(ready, max_rows=1)
    seen = []
    seed = long_seed(ready, ids_of(ready, "hi"))
    running = Request(ids_of(ready, "hi"), SamplingParams(max_new_tokens=60, temperature=1.0), seed)
    running.on_token = lambda k, t: seen.append(t) or (len(seen) == 5 and running.cancel())
    waiting = Request(ids_of(ready, "tell me"), SamplingParams(max_new_tokens=5), 4)
    after = Request(ids_of(ready, "tell me"), SamplingParams(max_new_tokens=5), 4)
    try:
        done = threading.Semaphore(0)
        scheduler.submit(running, lambda r: done.release())
        scheduler.submit(waiting, lambda r: done.release())
        waiting.cancel()  # cancelled before it ever runs
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
        run_all(scheduler, [after])  # the scheduler is healthy afterwards
    finally:
        scheduler.close()
    assert running.finish == ["cancelled"] and 5 <= len(running.tokens[0]) <= 6
    assert waiting.finish == ["cancelled"] and waiting.tokens == [[]]
    assert after.finish[0] in ("eos", "length") and after.error is None


def test_a_full_queue_refuses_with_a_retry_after(ready):
    scheduler = Scheduler(ready, max_rows=1, max_waiting=1)
    params = SamplingParams(max_new_tokens=60, temperature=1.0)
    seed = long_seed(ready, ids_of(ready, "hi"))
    first, second = Request(ids_of(ready, "hi"), params, seed), Request(ids_of(ready, "hi"), params, seed)
    try:
        scheduler.submit(first)
        while first.admitted_at is None:  # running: the queue is empty again
            time.sleep(0.001)
        scheduler.submit(second)
        with pytest.raises(QueueFull) as refused:
            scheduler.submit(Request(ids_of(ready, "hi"), params, 3))
        assert refused.value.retry_after >= 1 and refused.value.waiting == 1
    finally:
        first.cancel(), second.cancel()
        scheduler.close()


def test_a_failure_stays_with_its_requests(ready, monkeypatch):
    seed = long_seed(ready, ids_of(ready, "hi"))
    scheduler = Scheduler(ready, max_rows=4)
    real = DecodeBatch.prefill
    calls = {"n": 0}

    def flaky(self, requests, capacity):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated out of memory")
        return real(self, requests, capacity)

    monkeypatch.setattr(DecodeBatch, "prefill", flaky)
    failed, ok = Request(ids_of(ready, "hi"), SamplingParams(max_new_tokens=4), 1), None
    broken_hook = Request(ids_of(ready, "hi"), SamplingParams(max_new_tokens=60, temperature=1.0), seed)
    broken_hook.on_token = lambda k, t: 1 / 0  # a caller's hook that raises cancels only its own request
    try:
        run_all(scheduler, [failed])
        ok = Request(ids_of(ready, "tell me"), SamplingParams(max_new_tokens=4), 1)
        run_all(scheduler, [broken_hook, ok])
    finally:
        scheduler.close()
    assert failed.error and "simulated out of memory" in failed.error
    assert ok.error is None and len(ok.tokens[0]) >= 1
    assert broken_hook.finish == ["cancelled"] and len(broken_hook.tokens[0]) == 1


def test_bad_requests_are_refused_at_submit(ready):
    scheduler = Scheduler(ready)
    try:
        with pytest.raises(ValueError, match="vocabulary"):
            scheduler.submit(Request([10**9], SamplingParams(), 0))
        with pytest.raises(Exception, match="empty prompt"):
            scheduler.submit(Request([], SamplingParams(), 0))
        with pytest.raises(Exception, match="temperature"):
            scheduler.submit(Request([5], SamplingParams(temperature=-1), 0))
    finally:
        scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(Request([5], SamplingParams(), 0))
