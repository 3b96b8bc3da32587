"""Continuous batching in `alignkit serve`, measured against the same server with batching off and against
llama.cpp's OpenAI-compatible server on the GGUF the embedded model package ships.

    .venv/bin/python bench/serve_batching.py [--clients 8 --chats 24 --max-tokens 64]
        [--llama-python /path/to/venv/bin/python]

Each configuration is a separate server process on loopback, loaded, warmed with one chat, then given ``--chats``
streamed chats by ``--clients`` concurrent clients (closed loop: each client sends its next chat when its last one
ends). The prompts and seeds are the same for every configuration; alignkit's batched and unbatched servers give
identical tokens for the same seed, so their tokens/s compare the same work.

llama.cpp runs only when ``--llama-python`` names a Python with ``llama-cpp-python[server]`` installed (the bench
environment; never a dependency of alignkit): ``python -m venv benchenv && benchenv/bin/pip install
'llama-cpp-python[server]'``. It serves the Q4_1 GGUF with 4-bit weights; alignkit serves the same weights
dequantized to fp32 (bf16 autocast on CPUs with native bf16): different precision, reported as such.
llama-cpp-python's server decodes one request at a time (it has no batching across requests; with its default
``interrupt_requests`` a new request aborts the running one, so the bench turns that off and requests queue).
It sends no usage in streams: its tokens are counted as content chunks (one token each).
Results go to bench/results/serve_batching.json with the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import chat_load  # noqa: E402 (bench/loadgen.py)
from serve_helpers import free_port, serve_process  # noqa: E402

from alignkit.models.embedded import gguf_path  # noqa: E402
from alignkit.models.load import cpu_has_native_bf16  # noqa: E402
from alignkit.serve.process import wait_ready  # noqa: E402

PROMPTS = [
    "Give me three tips for a job interview.", "Write a short story about a lighthouse keeper.",
    "Explain how rain forms, step by step.", "Describe a good breakfast for a busy morning.",
    "List five things to pack for a beach trip and say why.", "Explain what a computer does, simply.",
    "Write a letter to a friend about your weekend.", "Suggest a weekend hobby and how to start it.",
]  # fmt: skip


def run_load(url: str, args, model: str) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.chats)]
    chat_load(url, prompts[:1], clients=1, max_tokens=8, model=model)  # warm-up (first-call costs)
    result = chat_load(url, prompts, clients=args.clients, max_tokens=args.max_tokens, model=model)
    return result.summary()


def alignkit_run(args, rows: int, tmp: Path) -> dict:
    extra = ["--max-batch-size", str(rows), "--max-concurrency", str(4 * args.clients), "--db", str(tmp / f"{rows}.db")]
    with serve_process(extra, tmp / f"serve-{rows}.log", timeout=300) as url:
        return run_load(url, args, "auto")


def llama_run(args, tmp: Path) -> dict:
    port = free_port()
    cmd = [
        args.llama_python, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 2),
        "--interrupt_requests", "False",  # its default: a new request aborts the running one (an empty answer)
    ]  # fmt: skip
    log = open(tmp / "llama.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, tmp / "llama.log", 300, path="/v1/models")
        return run_load(url, args, "smollm2")
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--chats", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="--max-batch-size of the batching server")
    ap.add_argument("--llama-python", default=None, help="a Python with llama-cpp-python[server] installed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_batching.json"))
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows["alignkit batching on"] = alignkit_run(args, args.batch_size, tmp)
        rows["alignkit batching off"] = alignkit_run(args, 1, tmp)
        if args.llama_python:
            rows["llama.cpp (llama-cpp-python server, Q4_1)"] = llama_run(args, tmp)
    on, off = rows["alignkit batching on"], rows["alignkit batching off"]
    ratios = {"tokens_per_s on/off": on["tokens_per_s"] / max(off["tokens_per_s"], 1e-9)}
    llama = rows.get("llama.cpp (llama-cpp-python server, Q4_1)")
    if llama:
        ratios["tokens_per_s alignkit on / llama.cpp"] = on["tokens_per_s"] / max(llama["tokens_per_s"], 1e-9)
    print(f"{'server':44s} {'tokens/s':>9s} {'TTFT p50':>9s} {'TTFT p95':>9s} {'req p50':>8s} errors")
    for name, r in rows.items():
        print(f"{name:44s} {r['tokens_per_s']:9.1f} {r['ttft_p50_ms'] / 1000:8.2f}s {r['ttft_p95_ms'] / 1000:8.2f}s "
              f"{r['p50_ms'] / 1000:7.2f}s {r['errors'] or '-'}")  # fmt: skip
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    out = {
        "kind": "serve_batching", "command": "python " + " ".join(sys.argv), "clients": args.clients,
        "chats": args.chats, "max_tokens": args.max_tokens, "cpu_native_bf16": cpu_has_native_bf16(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "rows": rows, "ratios": ratios,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
