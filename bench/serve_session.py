"""A short real session on the embedded model, for the serving docs and notes: two variants (the second is the
same embedded weights under another name unless --new gives a model), chats from a few users with thumbs (a
simple rule stands in for the person: up for an answer of more than 4 words that is not a refusal), side-by-side
votes (the longer answer wins), then `alignkit feedback stats` and `alignkit feedback export` in all three formats.

    .venv/bin/python bench/serve_session.py [--new runs/kto/model] [--out runs/serve_session]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import serve_process  # noqa: E402

PROMPTS = [
    "How do I boil an egg?", "Give me a name for a grey cat.", "What is the capital of France?",
    "Write one sentence about the sea.", "How many legs does a spider have?", "Suggest a quick breakfast.",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", default="smollm2-135m-instruct", help="The second variant's model")
    ap.add_argument("--out", default="runs/serve_session")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "session.sqlite"
    serve = ["--variant", "base=smollm2-135m-instruct", "--variant", f"new={args.new}", "--weights",
             "base=0.5,new=0.5", "--db", str(db), "--max-tokens", "96"]  # fmt: skip
    with serve_process(serve, out / "serve.log", timeout=300) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for u, prompt in enumerate(PROMPTS):
            r = client.chat.completions.create(model="auto", user=f"user{u % 3}", max_tokens=64, seed=u,
                                               messages=[{"role": "user", "content": prompt}])  # fmt: skip
            text = r.choices[0].message.content
            value = "up" if len(text.split()) > 4 and not text.lower().startswith("i'm sorry") else "down"
            httpx.post(f"{url}/v1/feedback", json={"response_id": r.id, "value": value, "user": f"user{u % 3}"})
            print(f"[{r.model}] {prompt!r} -> {text[:120]!r} ({value})")
        for u, prompt in enumerate(PROMPTS[:3]):
            c = httpx.post(f"{url}/v1/compare", json={"messages": [{"role": "user", "content": prompt}],
                           "max_tokens": 48, "user": f"cmp{u}"}, timeout=300).json()  # fmt: skip
            vote = "left" if len(c["left"]["content"]) >= len(c["right"]["content"]) else "right"
            httpx.post(f"{url}/v1/compare/{c['id']}/vote", json={"vote": vote, "user": f"cmp{u}"})
            left, right = c["left"]["content"][:60], c["right"]["content"][:60]
            print(f"compare {prompt!r}: left {left!r} | right {right!r} -> {vote}")
        metrics = httpx.get(f"{url}/metrics").text
        wanted = ("alignkit_feedback_total", "alignkit_requests_total")
        print("\n".join(line for line in metrics.splitlines() if line.startswith(wanted)))
    alignkit = [sys.executable, "-m", "alignkit"]
    subprocess.run([*alignkit, "feedback", "stats", "--db", str(db), "--baseline", "base", "--min-n", "3"], check=True)
    for fmt in ("kto", "pairs", "sft"):
        subprocess.run([*alignkit, "feedback", "export", "--db", str(db), "--format", fmt, "--out",
                        str(out / f"{fmt}.jsonl"), "--min-chars", "5"], check=False)  # fmt: skip


if __name__ == "__main__":
    main()
