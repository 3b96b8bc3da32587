"""Load generation against a running server (bench/serve_load.py and tests/test_serve_load.py): many concurrent
clients on one asyncio loop posting feedback or chats, recording each request's latency and which posts were
acknowledged."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of acknowledged requests, seconds
    acked: list[str] = field(default_factory=list)  # feedback ids (or response ids) the server acknowledged
    errors: dict[str, int] = field(default_factory=dict)  # status or exception name -> count
    ttft: list[float] = field(default_factory=list)  # chat streams: seconds to the first content chunk
    tokens: int = 0  # chat: completion tokens generated

    def summary(self) -> dict:
        lat = np.asarray(self.latencies) * 1000
        pct = {f"p{q}_ms": float(np.percentile(lat, q)) if lat.size else None for q in (50, 95, 99)}
        out = {"requests_ok": len(self.latencies), "errors": self.errors, "seconds": self.seconds,
               "requests_per_s": len(self.latencies) / self.seconds if self.seconds else 0.0, **pct}  # fmt: skip
        if self.ttft:
            t = np.asarray(self.ttft) * 1000
            out |= {"ttft_p50_ms": float(np.percentile(t, 50)), "ttft_p95_ms": float(np.percentile(t, 95)),
                    "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0}  # fmt: skip
        return out


async def _feedback(
    url: str, response_ids: list[str], total: int, clients: int, headers: dict, rate: float | None
) -> LoadResult:
    import httpx2 as httpx

    result = LoadResult(0.0)
    todo = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, headers=headers) as client:

        async def worker(c: int) -> None:
            for i in todo:
                fid = f"load-{uuid.uuid4().hex}"
                body = {
                    "response_id": response_ids[i % len(response_ids)],
                    "value": "up" if i % 3 else "down",
                    "feedback_id": fid,
                    "user": f"rater-{fid}",
                }  # fmt: skip (a rater rates a response once)
                t0 = time.perf_counter()
                if rate:  # open loop: post i is due at start + i / rate; latency counts from then (no
                    due = start + i / rate  # coordinated omission: a late client's wait is in its latency)
                    await asyncio.sleep(max(0.0, due - t0))
                    t0 = due
                try:
                    r = await client.post("/v1/feedback", json=body)
                except httpx.HTTPError as e:
                    result.errors[type(e).__name__] = result.errors.get(type(e).__name__, 0) + 1
                    continue
                if r.status_code in (200, 201) and r.json().get("id") == fid:
                    result.latencies.append(time.perf_counter() - t0)
                    result.acked.append(fid)
                else:
                    result.errors[str(r.status_code)] = result.errors.get(str(r.status_code), 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(clients)))
        result.seconds = time.perf_counter() - start
    return result


def feedback_load(
    url: str,
    response_ids: list[str],
    total: int = 5000,
    clients: int = 50,
    key: str | None = None,
    rate: float | None = None,
) -> LoadResult:
    """``total`` feedback posts (unique feedback ids) spread over ``response_ids`` by ``clients`` concurrent
    keep-alive connections -> LoadResult with the acknowledged feedback ids. Closed loop (each client posts as
    soon as its last post returns: the server's saturation throughput) unless ``rate`` (posts/s) is given: then
    open loop at that offered rate, latencies measured from each post's due time."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return asyncio.run(_feedback(url, response_ids, total, clients, headers, rate))


async def _chat(url: str, prompts: list[str], clients: int, max_tokens: int, model: str) -> LoadResult:
    import openai

    result = LoadResult(0.0)
    todo = iter(range(len(prompts)))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    async def worker(c: int) -> None:
        for i in todo:
            t0, first, chunks, usage = time.perf_counter(), None, 0, None
            try:
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompts[i]}], max_tokens=max_tokens,
                    temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True}, user=f"chat-{c}",
                )  # fmt: skip
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0 if first is None else first
                        chunks += 1
                    if chunk.usage is not None:
                        usage = chunk.usage.completion_tokens
                # a server that sends no usage (llama-cpp-python's): its content chunks, one token each
                result.tokens += usage if usage is not None else chunks
            except openai.APIError as e:
                result.errors[type(e).__name__] = result.errors.get(type(e).__name__, 0) + 1
                continue
            result.latencies.append(time.perf_counter() - t0)
            result.ttft.append(first if first is not None else time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(clients)))
    result.seconds = time.perf_counter() - t0
    await client.close()
    return result


def chat_load(url: str, prompts: list[str], clients: int = 4, max_tokens: int = 64, model: str = "auto"):
    """Streamed chats of ``prompts`` by ``clients`` concurrent clients -> LoadResult with TTFT and tokens."""
    return asyncio.run(_chat(url, prompts, clients, max_tokens, model))
