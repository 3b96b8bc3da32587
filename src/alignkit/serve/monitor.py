"""Failure detectors over a sliding window of recent traffic, against the older traffic as the baseline.

Each signal keeps the last ``window`` values ("recent") and, behind them, the ``baseline`` values before those
(values leave the recent window into the baseline). ``Monitor.state()`` gives, per detector:

========================  ==================================================  ==================================
detector                  value (recent window)                               alarm when (``threshold``)
========================  ==================================================  ==================================
``length_explosion``      mean completion tokens                              value > ``length_factor`` x baseline mean
``repetition``            share of responses with ``repetition_score`` >=     value > ``repetition_share``
                          ``repetition_level`` (a response repeating itself)
``thumbs_up_drop``        thumbs-up rate of the recent feedback               value < ``up_rate_floor`` (0.60), or
                                                                              value < baseline rate - ``up_rate_drop``
``safety_spike``          share of responses with a safety flag               value > ``safety_floor`` and
                                                                              value > ``safety_factor`` x baseline
========================  ==================================================  ==================================

``threshold`` in the state is the configured parameter of the column above; ``limit`` is the level ``value`` is
compared with (None while it needs a baseline that is not there yet). A detector alarms only with at least
``min_samples`` recent values (and, where it needs one, ``min_samples`` baseline values); ``reason`` says why it
alarms or why not. A window per variant is kept too: ``state(variant)``. Thread-safe.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from typing import Iterable

DETECTORS = ("length_explosion", "repetition", "thumbs_up_drop", "safety_spike")
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W_]+|[^\w\s]")  # CJK characters one by one


def repetition_score(text: str, n: int = 4, min_tokens: int = 16) -> float:
    """Share of the word ``n``-grams of ``text`` that repeat an earlier one: 0 for varied text, near 1 for a loop
    ("I am sorry. I am sorry. ..."). Texts under ``min_tokens`` tokens score 0 (too short to tell).

    The measure of ``alignkit.eval.samples.repetition_rate``, kept here because the server must not import
    ``alignkit.eval`` (it loads torch) on its request path; this one also splits CJK text into characters."""
    tokens = [t.lower() for t in _TOKEN.findall(text or "")]
    if len(tokens) < max(min_tokens, n + 1):
        return 0.0
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


class _Series:
    """The recent ``window`` values and the ``baseline`` values before them."""

    def __init__(self, window: int, baseline: int):
        self.recent: deque = deque()
        self.older: deque = deque(maxlen=baseline)
        self.window = window

    def add(self, value: float) -> None:
        self.recent.append(value)
        if len(self.recent) > self.window:
            self.older.append(self.recent.popleft())

    @staticmethod
    def mean(values: deque) -> float | None:
        return sum(values) / len(values) if values else None


class _Windows:
    def __init__(self, window: int, baseline: int):
        self.tokens = _Series(window, baseline)
        self.repetitive = _Series(window, baseline)
        self.flagged = _Series(window, baseline)
        self.up = _Series(window, baseline)


def _entry(alarm: bool, value, baseline, threshold: float, limit, n: int, reason: str) -> dict:
    return {"alarm": bool(alarm), "value": value, "baseline": baseline, "threshold": float(threshold),
            "limit": limit, "n": n, "reason": reason}  # fmt: skip


class Monitor:
    """See the module docstring. ``observe_response(row)`` takes a response row (``completion_tokens``, ``content``,
    ``flags``, ``variant``); ``observe_feedback(value, variant)`` a thumbs value ("up"/"down" or a bool)."""

    def __init__(
        self, window: int = 200, baseline: int = 1000, min_samples: int = 30, length_factor: float = 2.0,
        repetition_level: float = 0.5, repetition_share: float = 0.2, up_rate_floor: float = 0.60,
        up_rate_drop: float = 0.10, safety_factor: float = 3.0, safety_floor: float = 0.05,
    ):  # fmt: skip
        if window < 1 or baseline < 1 or min_samples < 1:
            raise ValueError(f"window {window}, baseline {baseline}, min_samples {min_samples}: each must be >= 1")
        if min_samples > window:
            raise ValueError(f"min_samples {min_samples} > window {window}: no detector could ever alarm")
        self.window, self.baseline, self.min_samples = window, baseline, min_samples
        self.length_factor = length_factor
        self.repetition_level, self.repetition_share = repetition_level, repetition_share
        self.up_rate_floor, self.up_rate_drop = up_rate_floor, up_rate_drop
        self.safety_factor, self.safety_floor = safety_factor, safety_floor
        self._lock = threading.Lock()
        self._all = _Windows(window, baseline)
        self._variants: dict[str, _Windows] = {}

    def _targets(self, variant: str | None) -> list[_Windows]:
        if variant is None:
            return [self._all]
        if variant not in self._variants:
            self._variants[variant] = _Windows(self.window, self.baseline)
        return [self._all, self._variants[variant]]

    def observe_response(self, row: dict) -> None:
        tokens = row.get("completion_tokens")
        repetitive = repetition_score(row.get("content") or "") >= self.repetition_level
        flagged = bool(row.get("flags"))
        with self._lock:
            for w in self._targets(row.get("variant")):
                if tokens is not None:
                    w.tokens.add(float(tokens))
                w.repetitive.add(float(repetitive))
                w.flagged.add(float(flagged))

    def observe_feedback(self, value, variant: str | None = None) -> None:
        if value in ("up", True):
            up = 1.0
        elif value in ("down", False):
            up = 0.0
        else:
            raise ValueError(f"feedback value {value!r}: use 'up' or 'down'")
        with self._lock:
            for w in self._targets(variant):
                w.up.add(up)

    def variants(self) -> list[str]:
        with self._lock:
            return sorted(self._variants)

    def state(self, variant: str | None = None) -> dict[str, dict]:
        """Every detector's ``{"alarm", "value", "baseline", "threshold", "limit", "n", "reason"}``: all traffic, or
        one variant's (a variant never seen has empty windows)."""
        with self._lock:
            w = self._all if variant is None else self._variants.get(variant) or _Windows(1, 1)
            return {
                "length_explosion": self._length(w.tokens),
                "repetition": self._repetition(w.repetitive),
                "thumbs_up_drop": self._thumbs(w.up),
                "safety_spike": self._safety(w.flagged),
            }

    def alarms(self, variant: str | None = None) -> list[str]:
        return [name for name, s in self.state(variant).items() if s["alarm"]]

    # ----------------------------------------------------------------------------------------- detectors

    def _few(self, s: _Series, what: str) -> str | None:
        if len(s.recent) < self.min_samples:
            return f"{len(s.recent)} recent {what}, {self.min_samples} needed"
        return None

    def _length(self, s: _Series) -> dict:
        value, base, n = _Series.mean(s.recent), _Series.mean(s.older), len(s.recent)
        limit = None if base is None or len(s.older) < self.min_samples else self.length_factor * base
        few = self._few(s, "responses")
        if few is None and limit is None:
            few = f"{len(s.older)} baseline responses, {self.min_samples} needed"
        if few:
            return _entry(False, value, base, self.length_factor, limit, n, few)
        alarm = value > limit
        reason = (f"mean {value:.1f} completion tokens over the last {n} responses "
                  f"{'>' if alarm else '<='} {self.length_factor:g} x baseline {base:.1f}")  # fmt: skip
        return _entry(alarm, value, base, self.length_factor, limit, n, reason)

    def _repetition(self, s: _Series) -> dict:
        value, base, n = _Series.mean(s.recent), _Series.mean(s.older), len(s.recent)
        few = self._few(s, "responses")
        if few:
            return _entry(False, value, base, self.repetition_share, self.repetition_share, n, few)
        alarm = value > self.repetition_share
        reason = (f"{value:.1%} of the last {n} responses repeat themselves (repetition score >= "
                  f"{self.repetition_level:g}) {'>' if alarm else '<='} {self.repetition_share:.0%}")  # fmt: skip
        return _entry(alarm, value, base, self.repetition_share, self.repetition_share, n, reason)

    def _thumbs(self, s: _Series) -> dict:
        value, base, n = _Series.mean(s.recent), _Series.mean(s.older), len(s.recent)
        limit = self.up_rate_floor
        if base is not None and len(s.older) >= self.min_samples:
            limit = max(limit, base - self.up_rate_drop)
        few = self._few(s, "ratings")
        if few:
            return _entry(False, value, base, self.up_rate_floor, limit, n, few)
        alarm = value < limit
        against = f"{self.up_rate_floor:.0%}" if limit == self.up_rate_floor else (
            f"baseline {base:.1%} - {self.up_rate_drop:.0%}")  # fmt: skip
        reason = f"thumbs-up rate {value:.1%} over the last {n} ratings {'<' if alarm else '>='} {against}"
        return _entry(alarm, value, base, self.up_rate_floor, limit, n, reason)

    def _safety(self, s: _Series) -> dict:
        value, base, n = _Series.mean(s.recent), _Series.mean(s.older), len(s.recent)
        known = base is not None and len(s.older) >= self.min_samples
        limit = max(self.safety_floor, self.safety_factor * base) if known else self.safety_floor
        few = self._few(s, "responses")
        if few:
            return _entry(False, value, base, self.safety_floor, limit, n, few)
        alarm = value > limit
        against = f"{self.safety_factor:g} x baseline {base:.1%}" if known and limit > self.safety_floor else (
            f"the {self.safety_floor:.0%} floor")  # fmt: skip
        reason = f"{value:.1%} of the last {n} responses flagged {'>' if alarm else '<='} {against}"
        return _entry(alarm, value, base, self.safety_floor, limit, n, reason)

    # ----------------------------------------------------------------------------------------- replay

    @classmethod
    def from_rows(cls, responses: Iterable[dict], feedback: Iterable[dict] = (), **options) -> Monitor:
        """A monitor that has seen ``responses`` and ``feedback`` rows (a store's, any order: sorted by time)."""
        monitor = cls(**options)
        for row in sorted(responses, key=lambda r: r.get("created") or 0):
            monitor.observe_response(row)
        for row in sorted(feedback, key=lambda r: r.get("created") or 0):
            monitor.observe_feedback(row["value"], (row.get("snapshot") or {}).get("variant") or row.get("variant"))
        return monitor
