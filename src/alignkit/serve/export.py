"""The store's feedback -> training files the trainers read unchanged (``alignkit feedback export``).

- ``kto``: one record per thumbs rating: ``{"prompt": messages, "completion": [assistant message], "label": bool,
  "user_id": rater hash, "response_id", "variant"}``, cleaned by ``alignkit.data.feedback.clean_feedback`` (biased
  raters, duplicates, too-short responses).
- ``pairs``: ``{"prompt", "chosen", "rejected", "source"}``: from thumbs (``feedback_to_pairs`` over the cleaned
  ratings, ``source: "thumbs"``) and from comparison votes (A or B preferred, ``source: "comparison"``; ties and
  "both bad" are skipped and counted). As Chatbot Arena does, a vote is dropped when either response revealed which
  model it is (``reveals_identity``): its variant or model name, or "I am ChatGPT", "as an AI developed by ...".
- ``sft``: the cleaned thumbs-up answers as ``{"messages": prompt messages + the answer}``.

A rater's later rating of the same response replaces the earlier one. Records whose prompt cannot be trained on
(no user turn, unknown roles) are dropped and counted as ``invalid``. Nothing is written when no record is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from alignkit.errors import DataError

FORMATS = ("kto", "pairs", "sft")

_AI_NAMES = (
    r"chat ?gpt|gpt-?[345](?:\.\d)?o?(?:-\w+)?|openai'?s? \w+ model|claude|llama ?\d*(?:\.\d)?|qwen ?\d*(?:\.\d)?|"
    r"gemini|bard|mistral|mixtral|smollm ?\d*|phi-?\d+|gemma ?\d*|deepseek|grok|copilot|falcon|vicuna|command ?r|"
    r"ernie|yi-\d+\w*|olmo|granite"
)
_LABS = (
    r"openai|anthropic|meta(?: ai)?|facebook|google(?: deepmind)?|deepmind|alibaba(?: cloud)?|mistral ai|"
    r"hugging ?face|microsoft|deepseek|xai|cohere|baidu|ibm|tii|technology innovation institute|allen institute"
)
IDENTITY_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"\b(?:i am|i'm|i’m|my name is|this is|call me|i was (?:called|named))\s+(?:an? |the )?"
        rf"(?:ai |language model |assistant |chatbot |model )?(?:called |named )?(?:{_AI_NAMES})\b",
        rf"\b(?:i was|i am|i'm|i’m|i have been|i've been)\s+(?:\w+\s+)?(?:developed|created|made|built|trained|"
        rf"designed)\s+by\s+(?:the )?(?:team at |researchers at |engineers at )?(?:{_LABS})\b",
        rf"\b(?:my|our) (?:creators?|developers?|makers?) (?:is|are|at) (?:{_LABS})\b",
        r"\bas an? (?:ai |artificial intelligence )?(?:language |large language |chat |conversational )?(?:model|"
        r"assistant|chatbot|ai|llm)\s+(?:\w+\s+)?(?:developed|created|made|built|trained|designed)\s+by\b",
        rf"\b(?:i am|i'm|i’m)\s+(?:an? )?(?:ai|language model|large language model|assistant|model)\s+(?:from|by)\s+"
        rf"(?:{_LABS})\b",
    )
)
_GENERIC_NAMES = {"base", "baseline", "candidate", "control", "default", "model", "main", "test", "treatment",
                  "new", "old", "local", "remote", "upstream", "policy", "assistant", "chat", "instruct"}  # fmt: skip


def identity_names(*names: str | None) -> list[str]:
    """Variant and model names worth looking for in a response: each name and a path's last part, at least 4
    characters and not a generic word like "baseline" or "model" (those appear in ordinary answers)."""
    out = []
    for name in names:
        if not name:
            continue
        for candidate in (name, Path(name).name, re.sub(r"[-_](?:instruct|chat|it|hf)$", "", Path(name).name)):
            c = candidate.strip()
            if len(c) >= 4 and c.lower() not in _GENERIC_NAMES and c not in out:
                out.append(c)
    return out


def reveals_identity(text: str, names: Iterable[str] = ()) -> str | None:
    """The phrase by which ``text`` reveals which model wrote it (one of ``names``, matched as a whole word, or an
    ``IDENTITY_PATTERNS`` phrase), else None."""
    for name in names:
        m = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE)
        if m:
            return m.group(0)
    for pattern in IDENTITY_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(0)
    return None


# --------------------------------------------------------------------------------------------- records


def prompt_messages(messages: Any) -> list[dict] | None:
    """The conversation as ``{"role", "content"}`` text messages the trainers accept (OpenAI content parts are
    joined, "developer" is "system"), or None when it cannot be a prompt (not a list, no text, ends with the
    assistant, unknown roles)."""
    if not isinstance(messages, list) or not messages:
        return None
    out = []
    for m in messages:
        if not isinstance(m, dict):
            return None
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "\n".join(t for t in texts if isinstance(t, str))
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            return None
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant" or not any(m["role"] == "user" and m["content"].strip() for m in out):
        return None
    return out


@dataclass
class ExportReport:
    """What ``export_feedback`` read, kept and dropped (reason -> count), and the cleaning report."""

    format: str
    out: Path | None = None
    written: int = 0
    read: dict[str, int] = field(default_factory=dict)  # what was read from the store
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> records left out
    sources: dict[str, int] = field(default_factory=dict)  # pairs: "thumbs" / "comparison" -> pairs written
    clean: Any = None  # alignkit.data.feedback.CleanReport of the thumbs ratings
    revealed: list[str] = field(default_factory=list)  # a few of the phrases that revealed an identity

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def lines(self) -> list[str]:
        out = ["read " + ", ".join(f"{n} {what}" for what, n in self.read.items())]
        if self.clean is not None:
            out += ["thumbs cleaning: " + line for line in self.clean.lines()]
        for reason, n in self.dropped.items():
            out.append(f"dropped {n}: {DROP_REASONS.get(reason, reason)}")
        if self.revealed:
            out.append("identity revealed by e.g. " + ", ".join(repr(x) for x in self.revealed))
        if self.sources:
            out.append("pairs from " + ", ".join(f"{k} {n}" for k, n in self.sources.items()))
        if self.out is not None:
            out.append(f"wrote {self.written} {self.format} records to {self.out}")
        return out

    def to_dict(self) -> dict:
        clean = None
        if self.clean is not None:
            clean = {"total": self.clean.total, "kept": self.clean.kept,
                     "removed": {k: len(v) for k, v in self.clean.removed.items()}}  # fmt: skip
        return {"format": self.format, "out": str(self.out) if self.out else None, "written": self.written,
                "read": self.read, "dropped": self.dropped, "sources": self.sources, "clean": clean}  # fmt: skip


DROP_REASONS = {
    "replaced": "ratings replaced by the same rater's later rating of the same response",
    "invalid": "records whose prompt or response cannot be trained on (no user turn, unknown role, empty answer)",
    "missing_response": "comparisons whose response is not in the store",
    "tie": "comparison votes 'tie' (no preference)",
    "both_bad": "comparison votes 'both bad' (no preference)",
    "identity_revealed": "comparison votes where a response revealed its model (Chatbot Arena's rule)",
    "duplicate_pair": "pairs identical to an earlier one",
    "thumbs_down": "thumbs-down ratings (sft keeps the thumbs-up answers)",
}


def _thumb_records(store, since, until, report: ExportReport) -> list[tuple[str, dict]]:
    """The ratings as (source, KTO record), the latest per (response, rater), prompts checked."""
    from alignkit.data.formats import InvalidRecord, to_binary
    from alignkit.serve.stats import latest_feedback

    rows = store.feedback(since, until)
    report.read["ratings"] = len(rows)
    rows, replaced = latest_feedback(rows)
    if replaced:
        report.drop("replaced", replaced)
    out = []
    for row in rows:
        snap = row.get("snapshot") or {}
        if snap.get("messages") is None or snap.get("content") is None:  # an old row: read the response itself
            snap = {**(store.get_response(row["response_id"]) or {}), **{k: v for k, v in snap.items() if v}}
        prompt = prompt_messages(snap.get("messages"))
        record = {"prompt": prompt, "completion": [{"role": "assistant", "content": snap.get("content") or ""}],
                  "label": row["value"] == "up", "user_id": row.get("user_hash"), "response_id": row["response_id"],
                  "variant": snap.get("variant")}  # fmt: skip
        if record["user_id"] is None:
            del record["user_id"]  # clean_feedback: no rater, never judged as one
        try:
            if prompt is None or row["value"] not in ("up", "down"):
                raise InvalidRecord("prompt", "cannot be trained on")
            to_binary(record, row["id"])
        except InvalidRecord:
            report.drop("invalid")
            continue
        out.append((f"feedback {row['id']}", record))
    return out


def _cleaned(store, since, until, report: ExportReport, cleaning: dict) -> list[tuple[str, dict]]:
    from alignkit.data.feedback import clean_feedback

    records = _thumb_records(store, since, until, report)
    kept, report.clean = clean_feedback(records, **cleaning)
    return kept


def _comparison_pairs(store, since, until, report: ExportReport) -> list[dict]:
    from alignkit.data.formats import InvalidRecord, to_pairwise

    rows = store.comparisons(since, until, voted_only=True)
    report.read["comparison votes"] = len(rows)
    cache: dict[str, dict | None] = {}

    def response(rid):
        if rid not in cache:
            cache[rid] = store.get_response(rid)
        return cache[rid]

    pairs = []
    for c in rows:
        if c["vote"] in ("tie", "both_bad"):
            report.drop(c["vote"])
            continue
        ra, rb = response(c["response_a"]), response(c["response_b"])
        if ra is None or rb is None:
            report.drop("missing_response")
            continue
        names = identity_names(c.get("variant_a"), c.get("variant_b"), ra.get("model"), rb.get("model"),
                               ra.get("variant"), rb.get("variant"))  # fmt: skip
        revealed = reveals_identity(ra["content"], names) or reveals_identity(rb["content"], names)
        if revealed:
            report.drop("identity_revealed")
            if len(report.revealed) < 3 and revealed not in report.revealed:
                report.revealed.append(revealed)
            continue
        chosen, rejected = (ra, rb) if c["vote"] == "a" else (rb, ra)
        pair = {
            "prompt": prompt_messages(c.get("messages") or ra.get("messages")),
            "chosen": [{"role": "assistant", "content": chosen["content"]}],
            "rejected": [{"role": "assistant", "content": rejected["content"]}],
            "source": "comparison",
        }
        try:
            if pair["prompt"] is None:
                raise InvalidRecord("prompt", "cannot be trained on")
            to_pairwise(pair, c["id"])
        except InvalidRecord:
            report.drop("invalid")
            continue
        pairs.append(pair)
    return pairs


def export_feedback(
    store, fmt: str, out: str | Path, since: float | None = None, until: float | None = None,
    max_pairs_per_prompt: int = 8, seed: int = 0, **cleaning,
) -> ExportReport:  # fmt: skip
    """Write ``store``'s feedback from ``since`` to ``until`` (unix seconds) as ``fmt`` (kto, pairs, sft) to ``out``.

    ``cleaning``: ``clean_feedback``'s ``min_rate``, ``max_rate``, ``min_ratings``, ``min_chars``. Returns the
    report; DataError (nothing written) when no record is left, saying what was dropped."""
    import json

    from alignkit.data.feedback import feedback_to_pairs
    from alignkit.data.jsonl import write_jsonl

    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r}: unknown. Fix: use one of {', '.join(FORMATS)}")
    unknown = set(cleaning) - {"min_rate", "max_rate", "min_ratings", "min_chars"}
    if unknown:
        raise TypeError(f"export_feedback: unknown cleaning option(s) {', '.join(sorted(unknown))}")
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out} is a directory. Fix: give a file name, e.g. {out / f'{fmt}.jsonl'}")
    report = ExportReport(fmt)
    kept = _cleaned(store, since, until, report, cleaning)
    if fmt == "kto":
        records = [rec for _, rec in kept]
    elif fmt == "sft":
        records = [{"messages": rec["prompt"] + rec["completion"]} for _, rec in kept if rec["label"]]
        if len(records) < len(kept):
            report.drop("thumbs_down", len(kept) - len(records))
    else:
        thumbs, _ = feedback_to_pairs(kept, max_pairs_per_prompt, seed)
        records, seen = [], set()
        for pair in [{**p, "source": "thumbs"} for p in thumbs] + _comparison_pairs(store, since, until, report):
            key = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)
            if key in seen:
                report.drop("duplicate_pair")
                continue
            seen.add(key)
            records.append(pair)
        for pair in records:
            report.sources[pair["source"]] = report.sources.get(pair["source"], 0) + 1
    if not records:
        what = "; ".join(report.lines())
        hint = {"sft": "sft needs thumbs-up ratings", "pairs": "pairs need a thumbs up and a thumbs down on the same "
                "prompt, or comparison votes for A or B", "kto": "kto needs thumbs ratings"}[fmt]  # fmt: skip
        raise DataError(
            f"no {fmt} records to write to {out} ({what}). Fix: {hint}; collect more feedback, widen --since/--until "
            "or relax the cleaning (--min-ratings, --min-rate, --max-rate, --min-chars)"
        )
    report.out, report.written = write_jsonl(out, records), len(records)
    return report
