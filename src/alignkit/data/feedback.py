"""Binary (thumbs up/down) feedback -> training data: clean it, turn it into pairs, split it by prompt.

Feedback records have ``prompt`` and ``completion`` (text or chat messages), ``label`` (true = thumbs up) and
optionally ``user_id`` (the rater); other fields are kept as they are. Functions take records as
``read_records`` returns them, ``(source, record)`` with ``file:line`` sources; plain dicts work too.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from alignkit.data.formats import BinaryExample, InvalidRecord, to_binary, validate_records
from alignkit.errors import DataError

Record = tuple[str, Any]  # (source like "feedback.jsonl:12", the raw record)

RULES = ("rater_bias", "duplicate", "too_short")  # applied in this order


@dataclass
class RaterStat:
    user_id: str | int
    rate: float  # share of thumbs up
    count: int


@dataclass
class CleanReport:
    total: int
    kept: int
    removed: dict[str, list[str]]  # rule -> sources of the records it removed, in input order
    why: dict[str, str]  # rule -> what it removes, with its thresholds
    raters: list[RaterStat] = field(default_factory=list)  # the raters whose records were removed

    def lines(self, examples: int = 3) -> list[str]:
        """One line per rule and per removed rater, for people."""
        out = [f"read {self.total} records, kept {self.kept}"]
        for rule, sources in self.removed.items():
            shown = ", e.g. " + ", ".join(sources[:examples]) + (", ..." if len(sources) > examples else "")
            out.append(f"{rule}: removed {len(sources)} ({self.why[rule]}){shown if sources else ''}")
        for r in self.raters:
            out.append(f"removed rater {r.user_id!r}: approval rate {r.rate:.2f} over {r.count} ratings")
        return out


@dataclass
class PairCounts:
    prompts: int  # distinct prompts
    prompts_with_both: int  # prompts with at least one thumbs up and one thumbs down
    pairs: int  # pairs made
    dropped_by_cap: int  # pairs left out by max_pairs_per_prompt


# --------------------------------------------------------------------------------------------- helpers


def _with_sources(records: Iterable) -> list[Record]:
    """``(source, record)`` pairs as given; plain records get ``record N`` as their source."""
    return [r if isinstance(r, tuple) else (f"record {i}", r) for i, r in enumerate(records)]


def _key(value: Any) -> str:
    """Normalized JSON, so equal prompts (or completions) compare equal whatever their key order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _to_feedback(record: Any, source: str) -> BinaryExample:
    example = to_binary(record, source)
    user = record.get("user_id")
    if user is not None and (isinstance(user, bool) or not isinstance(user, (str, int))):
        raise InvalidRecord("user_id", f"is {user!r}; use a string or an integer (or leave it out)")
    return example


def _validate(records: list[Record]) -> list[BinaryExample]:
    examples, problems = validate_records(records, _to_feedback, on_invalid="skip")
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(
            f"{len(problems)} invalid feedback record(s):\n  {listed}\n"
            "Fix: each record needs a non-empty prompt and completion and a label true (thumbs up) or false."
        )
    return examples


def response_text(completion: Any) -> str:
    """The response's text: the completion itself, or its assistant messages joined; stripped."""
    if isinstance(completion, str):
        return completion.strip()
    return "\n".join(m["content"] for m in completion).strip()


# --------------------------------------------------------------------------------------------- clean


def _rater_stats(examples: list[BinaryExample], records: list[Record]) -> dict[Any, RaterStat]:
    """Approval rate and count per rater (records without ``user_id`` are not counted)."""
    ups, counts = Counter(), Counter()
    for ex, (_, rec) in zip(examples, records):
        user = rec.get("user_id")
        if user is not None:
            counts[user] += 1
            ups[user] += ex.label
    return {u: RaterStat(u, ups[u] / n, n) for u, n in counts.items()}


def clean_feedback(
    records: Iterable, min_rate: float = 0.1, max_rate: float = 0.9, min_ratings: int = 5, min_chars: int = 10
) -> tuple[list[Record], CleanReport]:
    """Drop biased raters, duplicates and too-short responses, in that order; returns (kept, report).

    Raters with at least ``min_ratings`` records and an approval rate below ``min_rate`` or above ``max_rate``
    lose all their records. A duplicate has the same prompt and completion as an earlier record (the first is
    kept). A response is too short with fewer than ``min_chars`` characters. Invalid records raise DataError.
    """
    if not 0 <= min_rate <= max_rate <= 1:
        raise DataError(
            f"min_rate {min_rate}, max_rate {max_rate}: need 0 <= min_rate <= max_rate <= 1. "
            "Fix: e.g. --min-rate 0.1 --max-rate 0.9"
        )
    records = _with_sources(records)
    examples = _validate(records)

    stats = _rater_stats(examples, records)
    biased = {u for u, s in stats.items() if s.count >= min_ratings and not min_rate <= s.rate <= max_rate}
    removed = {rule: [] for rule in RULES}
    seen, kept = set(), []
    for ex, (source, rec) in zip(examples, records):
        key = (_key(ex.prompt), _key(ex.completion))
        if rec.get("user_id") in biased:  # None never is
            removed["rater_bias"].append(source)
            continue
        if key in seen:
            removed["duplicate"].append(source)
        elif len(response_text(ex.completion)) < min_chars:
            removed["too_short"].append(source)
        else:
            kept.append((source, rec))
        seen.add(key)
    why = {
        "rater_bias": f"raters with >= {min_ratings} ratings approving under {min_rate:g} or over {max_rate:g}",
        "duplicate": "same prompt and completion as an earlier record",
        "too_short": f"response under {min_chars} characters",
    }
    raters = [stats[u] for u in stats if u in biased]
    return kept, CleanReport(len(records), len(kept), removed, why, raters)


# --------------------------------------------------------------------------------------------- pairs


def _groups(records: list[Record]) -> list[tuple[dict, list[Any], list[Any]]]:
    """Per prompt, in order of first appearance: (first record, thumbs-up completions, thumbs-down completions)."""
    groups: dict[str, tuple[dict, list, list]] = {}
    for ex, (_, rec) in zip(_validate(records), records):
        first, ups, downs = groups.setdefault(_key(ex.prompt), (rec, [], []))
        (ups if ex.label else downs).append(rec["completion"])
    return list(groups.values())


def _combinations(ups: list, downs: list) -> list[tuple[Any, Any]]:
    """Every (up, down) combination whose two completions differ."""
    return [(u, d) for u, d in itertools.product(ups, downs) if _key(u) != _key(d)]


def feedback_to_pairs(records: Iterable, max_pairs_per_prompt: int = 8, seed: int = 0) -> tuple[list[dict], PairCounts]:
    """Each thumbs-up completion preferred over each thumbs-down completion of the same prompt.

    At most ``max_pairs_per_prompt`` pairs per prompt (a seeded random choice when there are more). Returns
    ``{"prompt", "chosen", "rejected"}`` records in the form of the input (text or messages), and the counts.
    """
    _check_cap(max_pairs_per_prompt)
    rng = random.Random(seed)
    groups = _groups(_with_sources(records))
    pairs, possible = [], 0
    for first, ups, downs in groups:
        combos = _combinations(ups, downs)
        possible += len(combos)
        if len(combos) > max_pairs_per_prompt:
            combos = [combos[i] for i in sorted(rng.sample(range(len(combos)), max_pairs_per_prompt))]
        pairs += [{"prompt": first["prompt"], "chosen": u, "rejected": d} for u, d in combos]
    with_both = sum(bool(_combinations(ups, downs)) for _, ups, downs in groups)
    return pairs, PairCounts(len(groups), with_both, len(pairs), possible - len(pairs))


def _check_cap(max_pairs_per_prompt: int) -> None:
    if max_pairs_per_prompt < 1:
        raise DataError(f"max_pairs_per_prompt is {max_pairs_per_prompt}. Fix: use 1 or more")


# --------------------------------------------------------------------------------------------- split


def check_fractions(fractions: Iterable[float]) -> tuple[float, float, float]:
    """Three positive (train, val, test) shares summing to 1, else DataError."""
    fractions = tuple(fractions)
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(
            f"fractions {','.join(map(str, fractions))}: need three positive numbers (train, val, test) "
            "that sum to 1. Fix: e.g. --fractions 0.8,0.1,0.1"
        )
    return fractions


def split_by_prompt(records: Iterable, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[list, list, list]:
    """(train, val, test) with all records of a prompt in the same split; sizes follow ``fractions`` roughly.

    Works for any record with a ``prompt`` field. Items come back as given, in input order within each split.
    """
    bounds = list(itertools.accumulate(check_fractions(fractions)))
    items = list(records)
    by_prompt = defaultdict(list)
    for i, (source, rec) in enumerate(_with_sources(items)):
        if not isinstance(rec, dict) or rec.get("prompt") is None:
            raise DataError(f"{source}: field 'prompt': is missing. Fix: splitting by prompt needs a prompt field")
        by_prompt[_key(rec["prompt"])].append(i)
    prompts = sorted(by_prompt)
    random.Random(seed).shuffle(prompts)
    split_of, done = {}, 0
    for p in prompts:  # a prompt goes where the middle of its records falls on the cumulative fractions
        n = len(by_prompt[p])
        middle = (done + n / 2) / len(items)
        split = next((s for s, b in enumerate(bounds) if middle < b), 2)
        split_of.update({i: split for i in by_prompt[p]})
        done += n
    return tuple([item for i, item in enumerate(items) if split_of[i] == s] for s in range(3))
