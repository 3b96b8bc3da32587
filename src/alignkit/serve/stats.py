"""Feedback statistics and the A/B decision: pure functions over the store's rows (docs/serving_design.md).

- ``variant_stats``: per variant, responses, flagged responses, mean completion tokens, thumbs up/down and the
  thumbs-up rate with a 95% Wilson interval. A rater's later thumbs on the same response replaces the earlier one
  (``latest_feedback``); the variant of a rating is the one of its response's snapshot.
- ``comparison_stats``: per variant pair, the win rate of the first with ties (and "both bad") as half a win and a
  95% Wilson interval of that rate (conservative: ties lower the variance), the win rate over decisive votes, and
  the share of decisive votes for the response shown on the left (position bias).
- ``ab_decision``: promote the candidate when its thumbs-up rate is ahead of the baseline's by at least ``margin``
  with ``min_n`` ratings each and the 95% Newcombe interval of the difference above 0; roll back when the interval
  is below 0; keep collecting otherwise, saying what is missing.
- ``buckets``: the same per time window (``--window 1h``); ``summarize``: everything, JSON-ready.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Iterable

from alignkit.errors import UserError
from alignkit.stats import newcombe_difference, wilson_interval

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ACTIONS = ("promote", "keep_collecting", "roll_back")
COMPARISON_INTERVAL = "95% Wilson score interval of (wins + ties/2) / votes; 'both bad' counts as a tie"
MAX_BUCKETS = 1000


# --------------------------------------------------------------------------------------------- times


def parse_duration(text: str, option: str = "--window") -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"1d"``, ``"2w"`` (or plain seconds) -> seconds; UserError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text).lower())
    seconds = float(m.group(1)) * DURATION_UNITS[m.group(2) or "s"] if m else 0.0
    if seconds <= 0:
        raise UserError(f"{option} {text}: not a duration. Fix: a positive number with a unit s, m, h, d or w, "
                        "e.g. 1h or 1d")  # fmt: skip
    return seconds


def parse_time(text: str, option: str = "--since", now: float | None = None) -> float:
    """Unix seconds, an ISO date/time (UTC unless it has an offset) or a duration ago (``"24h"``) -> unix seconds."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"\d+(?:\.\d+)?\s*[smhdw]", text.lower()):
        return (time.time() if now is None else now) - parse_duration(text, option)
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise UserError(f"{option} {text}: not a time. Fix: unix seconds (1714560000), an ISO time "
                        "(2024-05-01 or 2024-05-01T12:00, UTC unless it has an offset) or a duration ago (24h, 7d)"
                        ) from None  # fmt: skip
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def format_duration(seconds: float) -> str:
    """Seconds as the largest whole unit: 86400 -> ``1d``, 5400 -> ``90m``, 42 -> ``42s``."""
    for unit in ("w", "d", "h", "m"):
        if seconds >= DURATION_UNITS[unit] and seconds % DURATION_UNITS[unit] == 0:
            return f"{seconds / DURATION_UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def format_time(t: float | None) -> str:
    """Unix seconds as ``2024-05-01 12:00:00Z``."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def select(rows: Iterable[dict], since: float | None = None, until: float | None = None, key: str = "created"):
    """The rows with ``since <= row[key] < until`` (either bound optional)."""
    return [r for r in rows if (since is None or r[key] >= since) and (until is None or r[key] < until)]


# --------------------------------------------------------------------------------------------- per variant


def wilson(successes: float, n: int, alpha: float = 0.05) -> list[float] | None:
    """The Wilson score interval of ``successes / n`` (statsmodels), None when n is 0."""
    if n <= 0:
        return None
    return list(wilson_interval(successes, n, alpha))


def latest_feedback(feedback: Iterable[dict]) -> tuple[list[dict], int]:
    """One rating per (response, rater): the latest; ratings without a rater all count. Returns (kept, replaced)."""
    rows = sorted(feedback, key=lambda r: (r["created"], r["id"]))
    latest: dict = {}
    for r in rows:
        key = (r["response_id"], r["user_hash"]) if r.get("user_hash") is not None else ("id", r["id"])
        latest[key] = r
    kept = sorted(latest.values(), key=lambda r: (r["created"], r["id"]))
    return kept, len(rows) - len(kept)


def feedback_variant(row: dict, variant_of: dict[str, str] | None = None) -> str | None:
    """The variant a rating is about: its snapshot's, else the row's ``variant`` (the store joins it in), else its
    response's (``variant_of``: response id -> variant)."""
    for variant in ((row.get("snapshot") or {}).get("variant"), row.get("variant")):
        if variant is not None:
            return variant
    return (variant_of or {}).get(row["response_id"])


def _empty(variant: str) -> dict:
    return {"variant": variant, "responses": 0, "flagged": 0, "mean_completion_tokens": None, "up": 0, "down": 0,
            "rated": 0, "up_rate": None, "interval": None}  # fmt: skip


def variant_stats(
    responses: Iterable[dict], feedback: Iterable[dict], alpha: float = 0.05, variant_of: dict | None = None
) -> dict[str, dict]:
    """Per variant (sorted by name): ``{"variant", "responses", "flagged", "mean_completion_tokens", "up", "down",
    "rated", "up_rate", "interval"}``; ``interval`` is the ``1 - alpha`` Wilson interval of ``up_rate``. Pass
    feedback through ``latest_feedback`` first to count each rater once per response. ``variant_of`` (response id
    -> variant) finds the variant of ratings without one whose response is not among ``responses``."""
    responses = list(responses)
    variant_of = {**(variant_of or {}), **{r["id"]: r["variant"] for r in responses}}
    out: dict[str, dict] = {}
    tokens: dict[str, list[int]] = defaultdict(list)
    for r in responses:
        s = out.setdefault(r["variant"], _empty(r["variant"]))
        s["responses"] += 1
        s["flagged"] += bool(r.get("flags"))
        if r.get("completion_tokens") is not None:
            tokens[r["variant"]].append(r["completion_tokens"])
    for f in feedback:
        variant = feedback_variant(f, variant_of)
        if variant is None:
            continue
        s = out.setdefault(variant, _empty(variant))
        if f["value"] == "up":
            s["up"] += 1
        elif f["value"] == "down":
            s["down"] += 1
    for v, s in out.items():
        s["rated"] = s["up"] + s["down"]
        s["up_rate"] = s["up"] / s["rated"] if s["rated"] else None
        s["interval"] = wilson(s["up"], s["rated"], alpha)
        s["mean_completion_tokens"] = sum(tokens[v]) / len(tokens[v]) if tokens[v] else None
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------- comparisons


def comparison_stats(comparisons: Iterable[dict], alpha: float = 0.05) -> list[dict]:
    """Per pair of different variants (names sorted, ``a`` < ``b``), over voted comparisons: ``{"a", "b", "votes",
    "wins_a", "wins_b", "ties", "both_bad", "win_rate_a", "interval", "decisive_rate_a", "decisive_interval",
    "left_share"}``. ``win_rate_a`` counts ties and "both bad" as half a win (``COMPARISON_INTERVAL``);
    ``decisive_rate_a`` is wins_a / (wins_a + wins_b) with its Wilson interval; ``left_share`` is the share of
    decisive votes that went to the response shown on the left (0.5 = no position bias)."""
    pairs: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for c in comparisons:
        vote = c.get("vote")
        if vote is None or c["variant_a"] == c["variant_b"]:
            continue
        if vote not in ("a", "b", "tie", "both_bad"):
            raise ValueError(f"comparison {c['id']}: vote {vote!r}; expected a, b, tie or both_bad")
        a, b = sorted((c["variant_a"], c["variant_b"]))
        counts = pairs[(a, b)]
        if vote in ("tie", "both_bad"):
            counts["ties" if vote == "tie" else "both_bad"] += 1
            continue
        winner = c["variant_a"] if vote == "a" else c["variant_b"]
        counts["wins_a" if winner == a else "wins_b"] += 1
        counts["left"] += (vote == "a") == (c.get("a_shown") == "left")
    out = []
    for (a, b), k in sorted(pairs.items()):
        votes = k["wins_a"] + k["wins_b"] + k["ties"] + k["both_bad"]
        decisive = k["wins_a"] + k["wins_b"]
        score = k["wins_a"] + (k["ties"] + k["both_bad"]) / 2
        out.append({
            "a": a, "b": b, "votes": votes, "wins_a": k["wins_a"], "wins_b": k["wins_b"], "ties": k["ties"],
            "both_bad": k["both_bad"], "win_rate_a": score / votes, "interval": wilson(score, votes, alpha),
            "decisive_rate_a": k["wins_a"] / decisive if decisive else None,
            "decisive_interval": wilson(k["wins_a"], decisive, alpha),
            "left_share": k["left"] / decisive if decisive else None,
        })  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- decision


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def ab_decision(baseline: dict, candidate: dict, margin: float = 0.05, min_n: int = 100, alpha: float = 0.05) -> dict:
    """Promote, keep collecting or roll back ``candidate`` against ``baseline`` (two ``variant_stats`` entries).

    Returns ``{"baseline", "candidate", "action", "reason", "rate_baseline", "rate_candidate", "n_baseline",
    "n_candidate", "diff", "diff_interval", "p_value", "margin", "min_n", "more_needed", "sentence"}``.
    ``reason``: ``too_few`` (under ``min_n`` ratings; ``more_needed`` says how many more per variant),
    ``not_significant`` (the interval of the difference holds 0; ``more_needed`` estimates the ratings per variant
    that would make a difference of the observed size significant), ``below_margin`` (significantly ahead, by
    less than ``margin``), ``ahead`` (promote) or ``worse`` (roll back)."""
    check_decision_options(margin, min_n)
    b, c = baseline["variant"], candidate["variant"]
    n_b, n_c, up_b, up_c = baseline["rated"], candidate["rated"], baseline["up"], candidate["up"]
    out = {"baseline": b, "candidate": c, "rate_baseline": baseline["up_rate"], "rate_candidate": candidate["up_rate"],
           "n_baseline": n_b, "n_candidate": n_c, "diff": None, "diff_interval": None, "p_value": None,
           "margin": margin, "min_n": min_n, "more_needed": {}}  # fmt: skip
    if n_b < min_n or n_c < min_n:
        more = {v: min_n - n for v, n in ((c, n_c), (b, n_b)) if n < min_n}
        missing = " and ".join(f"{k} more for {v} (has {min_n - k})" for v, k in more.items())
        return {**out, "action": "keep_collecting", "reason": "too_few", "more_needed": more,
                "sentence": f"keep collecting: {c} vs baseline {b} needs {min_n} ratings each; {missing}"}  # fmt: skip
    diff = up_c / n_c - up_b / n_b
    interval, p = newcombe_difference(up_c, n_c, up_b, n_b, alpha)
    interval = list(interval)
    out.update(diff=diff, diff_interval=interval, p_value=p)
    level = f"{1 - alpha:.0%}"
    numbers = (f"thumbs-up {up_c / n_c:.3f} (n={n_c}) vs {up_b / n_b:.3f} (n={n_b}), difference {diff:+.3f}, "
               f"{level} CI [{interval[0]:+.3f}, {interval[1]:+.3f}], p={p:.3g}")  # fmt: skip
    if interval[0] > 0 and diff >= margin - 1e-12:  # 0.35 - 0.30 is 0.04999999999999999
        action, reason = "promote", "ahead"
        sentence = f"promote {c} over baseline {b}: {numbers}; ahead by at least the {margin:+.3f} margin"
    elif interval[1] < 0:
        action, reason = "roll_back", "worse"
        sentence = f"roll back {c} (keep baseline {b}): {numbers}; significantly worse"
    elif interval[0] > 0:
        action, reason = "keep_collecting", "below_margin"
        sentence = f"keep collecting: {c} vs baseline {b}: {numbers}; significantly ahead but under the " \
                   f"{margin:+.3f} margin"  # fmt: skip
    else:
        action, reason = "keep_collecting", "not_significant"
        pb, pc = up_b / n_b, up_c / n_c
        if diff != 0:
            need = math.ceil(_z(alpha) ** 2 * (pb * (1 - pb) + pc * (1 - pc)) / diff**2)
            out["more_needed"] = {v: need - n for v, n in ((c, n_c), (b, n_b)) if need > n}
        more = out["more_needed"]
        hint = (f"about {max(more.values())} more ratings per variant if the difference stays {diff:+.3f}" if more
                else "the difference is too small to settle")  # fmt: skip
        sentence = f"keep collecting: {c} vs baseline {b}: {numbers}; not significant ({hint})"
    return {**out, "action": action, "reason": reason, "sentence": sentence}


def check_decision_options(margin: float, min_n: int) -> None:
    if not 0 <= margin < 1:
        raise UserError(f"--margin {margin}: a thumbs-up rate difference must be in [0, 1). Fix: e.g. --margin 0.05")
    if min_n < 1:
        raise UserError(f"--min-n {min_n}: need at least 1 rating per variant. Fix: e.g. --min-n 100")


def pick_baseline(stats: dict[str, dict], baseline: str | None = None) -> tuple[str | None, str]:
    """(baseline variant, how it was chosen): the given one, else the variant with the most responses."""
    if not stats:
        return None, "no variants"
    if baseline is not None:
        if baseline not in stats:
            known = ", ".join(stats) or "none"
            raise UserError(f"--baseline {baseline}: no such variant in this data (variants: {known}). Fix: pass one "
                            "of them")  # fmt: skip
        return baseline, "given"
    return max(stats.values(), key=lambda s: (s["responses"], s["rated"]))["variant"], "most responses"


def decisions(stats: dict[str, dict], baseline: str | None, margin=0.05, min_n=100, alpha=0.05) -> list[dict]:
    """``ab_decision`` of every other variant against ``baseline``."""
    if baseline is None:
        return []
    return [ab_decision(stats[baseline], s, margin, min_n, alpha) for v, s in stats.items() if v != baseline]


# --------------------------------------------------------------------------------------------- windows


def buckets(
    responses: list[dict], feedback: list[dict], size: float, since: float | None = None, alpha: float = 0.05
) -> list[dict]:
    """``variant_stats`` per time window of ``size`` seconds, non-empty windows only, oldest first:
    ``{"start", "end", "variants"}``. Windows start at ``since`` (rows before it are left out), else at a multiple
    of ``size`` (whole UTC hours, days)."""
    if since is not None:
        responses, feedback = select(responses, since), select(feedback, since)
    times = [r["created"] for r in responses] + [f["created"] for f in feedback]
    if not times:
        return []
    start = since if since is not None else math.floor(min(times) / size) * size
    count = math.floor((max(times) - start) / size) + 1
    if count > MAX_BUCKETS:
        raise UserError(f"--window {size:g}s splits this data into {count} windows (at most {MAX_BUCKETS}). Fix: use "
                        "a larger --window or a shorter --since/--until range")  # fmt: skip
    variant_of = {r["id"]: r["variant"] for r in responses}
    by_r, by_f = defaultdict(list), defaultdict(list)
    for r in responses:
        by_r[math.floor((r["created"] - start) / size)].append(r)
    for f in feedback:
        by_f[math.floor((f["created"] - start) / size)].append(f)
    out = []
    for k in sorted(set(by_r) | set(by_f)):
        out.append({"start": start + k * size, "end": start + (k + 1) * size,
                    "variants": variant_stats(by_r[k], by_f[k], alpha, variant_of)})  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- everything


def summarize(
    responses: Iterable[dict], feedback: Iterable[dict], comparisons: Iterable[dict] = (), *,
    since: float | None = None, until: float | None = None, window: float | None = None,
    baseline: str | None = None, margin: float = 0.05, min_n: int = 100, alpha: float = 0.05,
    monitor: dict | None = None,
) -> dict:  # fmt: skip
    """Everything ``alignkit feedback stats`` shows, as JSON-ready data, over rows with ``since <= created <
    until``: counts, per-variant stats (and per window of ``window`` seconds), comparisons, the A/B decisions
    against ``baseline`` (default: the variant with the most responses) and the failure detectors' state
    (``Monitor.from_rows`` with the ``monitor`` options) for all traffic and per variant."""
    from alignkit.serve.monitor import Monitor

    check_decision_options(margin, min_n)
    responses = select(responses, since, until)
    all_feedback = select(feedback, since, until)
    comparisons = select(comparisons, since, until)
    kept, replaced = latest_feedback(all_feedback)
    stats = variant_stats(responses, kept, alpha)
    chosen, how = pick_baseline(stats, baseline)
    mon = Monitor.from_rows(responses, kept, **(monitor or {}))
    voted = [c for c in comparisons if c.get("vote") is not None]
    return {
        "since": since, "until": until, "window": window,
        "counts": {"responses": len(responses), "feedback": len(all_feedback), "feedback_replaced": replaced,
                   "comparisons": len(comparisons), "votes": len(voted)},
        "variants": list(stats.values()),
        "windows": [{**b, "variants": list(b["variants"].values())} for b in buckets(responses, kept, window, since,
                                                                                      alpha)] if window else [],
        "comparisons": comparison_stats(voted, alpha), "comparison_interval": COMPARISON_INTERVAL,
        "baseline": chosen, "baseline_chosen_by": how,
        "decisions": decisions(stats, chosen, margin, min_n, alpha),
        "monitor": {"all": mon.state(), "variants": {v: mon.state(v) for v in mon.variants()}},
    }  # fmt: skip
