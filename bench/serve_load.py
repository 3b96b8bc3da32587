"""Load on `alignkit serve` over loopback: feedback posts (requests/s, p50/p95/p99 latency, nothing lost) and
streamed chat on the embedded model (tokens/s, time to first token).

    .venv/bin/python bench/serve_load.py [--feedback 5000 --clients 50 --rate 500] [--chats 16 --chat-clients 4]
        [--db URL]

Starts the server as a separate process (as in production: the load generator does not share its CPU time
slices with the server's event loop beyond the OS's scheduling), waits for /health, then runs each load. On a
2-core machine the client and the server compete for the same cores: the numbers are a floor. Results go to
bench/results/serve_load.json with the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loadgen import chat_load, feedback_load  # noqa: E402 (bench/loadgen.py)
from serve_helpers import serve_process  # noqa: E402

from alignkit.models.load import cpu_has_native_bf16  # noqa: E402
from alignkit.serve.store import Store  # noqa: E402

PROMPTS = [
    "Give me three tips for a job interview.", "What is a good name for a cat?", "Explain rain to a child.",
    "How do I boil an egg?", "Write a haiku about autumn.", "What is 17 times 3?", "Why is the sky blue?",
    "Suggest a weekend hobby.",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--feedback", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rate", type=float, default=500.0, help="offered posts/s of the open-loop run (0: skip it)")
    ap.add_argument("--chats", type=int, default=16)
    ap.add_argument("--chat-clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--db", default=None, help="Store URL (default: a fresh SQLite file)")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    db = args.db or str(tmp / "load.sqlite")
    report = {
        "kind": "serve_load", "command": " ".join(["python", *sys.argv]), "cpu_native_bf16": cpu_has_native_bf16(),
        "machine": platform.processor() or platform.machine(), "store": "sqlite" if args.db is None else args.db,
    }  # fmt: skip
    with serve_process(["--db", db, "--max-concurrency", str(max(4, args.chat_clients))], tmp / "serve.log",
                       timeout=300) as url:  # fmt: skip
        chats = chat_load(url, [PROMPTS[i % len(PROMPTS)] for i in range(args.chats)], args.chat_clients,
                          args.max_tokens)  # fmt: skip
        report["chat"] = {"chats": args.chats, "clients": args.chat_clients, "max_tokens": args.max_tokens,
                          **chats.summary()}  # fmt: skip
        print("chat:", json.dumps(report["chat"]))
        with Store(db) as store:
            ids = [r["id"] for r in store.responses()]
        runs = {"feedback": feedback_load(url, ids, args.feedback, args.clients)}  # closed loop: saturation
        if args.rate:  # open loop at the goal's rate: the latency a client sees at 500 posts/s
            runs["feedback_at_rate"] = feedback_load(url, ids, args.feedback, args.clients, rate=args.rate)
    with Store(db) as store:
        stored = Counter(f["id"] for f in store.feedback())
    for name, fb in runs.items():
        lost = [fid for fid in fb.acked if stored[fid] != 1]
        report[name] = {"posts": args.feedback, "clients": args.clients, "offered_rate": args.rate if "rate" in name
                        else None, **fb.summary(), "acknowledged_not_stored_once": len(lost)}  # fmt: skip
        print(f"{name}:", json.dumps(report[name]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
