"""Does one long prompt stall the streams already running? `alignkit serve` with chunked prefill (the default
``--prefill-chunk 256``) against the same server prefilling a prompt in one forward (``--prefill-chunk 100000``).

    .venv/bin/python bench/serve_long_prompt.py [--streams 4 --chars 10000]

``--streams`` streamed chats (96 new tokens each) start; once each has its first token, one more client sends a
prompt of ``--chars`` characters. Per running stream: the longest wait between two content chunks (the stall the
long prompt causes); for the long request: its time to first token. Results: bench/results/serve_long_prompt.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import serve_process  # noqa: E402

from alignkit.models.load import cpu_has_native_bf16  # noqa: E402


async def scenario(url: str, streams: int, chars: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    started = [asyncio.Event() for _ in range(streams)]
    gaps: list[float] = []

    async def stream(i: int) -> None:
        last = None
        worst = 0.0
        s = await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": f"Write a long story about a lighthouse, part {i}."}],
            max_tokens=96, temperature=0.7, seed=i, stream=True,
        )  # fmt: skip
        async for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.perf_counter()
                if last is not None:
                    worst = max(worst, now - last)
                last = now
                started[i].set()
        gaps.append(worst)

    async def long_prompt() -> float:
        await asyncio.gather(*(e.wait() for e in started))
        text = ("The quick brown fox jumps over the lazy dog near the river bank. " * (chars // 64 + 1))[:chars]
        t0 = time.perf_counter()
        s = await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": text + "\nSummarize this in one sentence."}],
            max_tokens=8, temperature=0, stream=True,
        )  # fmt: skip
        ttft = None
        async for chunk in s:
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - t0
        return ttft if ttft is not None else time.perf_counter() - t0

    results = await asyncio.gather(*(stream(i) for i in range(streams)), long_prompt())
    await client.close()
    return {"max_gap_s_per_stream": sorted(gaps), "worst_gap_s": max(gaps), "long_prompt_ttft_s": results[-1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--chars", type=int, default=10_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_long_prompt.json"))
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for name, chunk in (("chunked prefill (256 tokens per step)", 256), ("one-forward prefill", 100_000)):
            extra = ["--prefill-chunk", str(chunk), "--max-tokens", "128", "--db", str(Path(d) / f"{chunk}.db")]
            with serve_process(extra, Path(d) / f"{chunk}.log", timeout=300) as url:
                asyncio.run(scenario(url, 1, 200))  # warm-up
                rows[name] = asyncio.run(scenario(url, args.streams, args.chars))
    for name, r in rows.items():
        print(f"{name:40s} worst stall of a running stream {r['worst_gap_s']:.2f}s; long prompt TTFT "
              f"{r['long_prompt_ttft_s']:.2f}s")  # fmt: skip
    out = {"kind": "serve_long_prompt", "command": "python " + " ".join(sys.argv), "streams": args.streams,
           "chars": args.chars, "cpu_native_bf16": cpu_has_native_bf16(), "cpus": os.cpu_count(),
           "machine": platform.machine(), "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
