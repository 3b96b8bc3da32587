"""How a report shows numbers: one format for every number, never ``nan`` or ``inf``, intervals next to their
estimates, and nested evaluation results flattened to labelled rows.

- ``fmt``: a number with 4 significant digits (integers as they are); null, NaN and infinities as ``n/a``;
- ``rate``: a rate with 3 decimals; ``interval``: ``0.731 [0.644, 0.812] (n=48)``;
- ``flatten``: (label, shown value) of every field of a JSON object, to any depth, labelled by its dotted path
  (``kl.k3.sequence.mean``, ``safety.policy.refusal_rate_harmful``). An interval is shown on the row of its
  estimate, labelled ``ESTIMATE [INTERVAL]``. What counts as an interval is what alignkit's evaluations write:

  - a list ``[low, high]`` under a name with ``interval`` in it, ``wilson``, ``bootstrap``, ``ci`` or ``*_ci``
    (``refusal_interval_harmful``, ``agreement_interval``, a win rate's ``wilson`` and ``bootstrap``);
  - sibling fields ``X_low`` / ``X_high`` (``alignkit eval math``'s ``interval_low`` / ``interval_high``);
  - an object with ``low`` and ``high`` (or ``lo``/``hi``, ``lower``/``upper``) and optionally its estimate
    (``mean``, ``rate``, ``value``, ``estimate``, ``rating``, ``point``) and ``n`` (``alignkit eval rank``).

  Its estimate is the sibling the name points to: ``wilson`` -> ``decisive_rate``, ``bootstrap`` -> ``rate``,
  ``refusal_interval_harmful`` -> ``refusal_rate_harmful``, ``agreement_interval`` -> ``agreement``, ``interval``
  -> ``accuracy`` (or ``rate``, ``mean``, ``value``). Its n: a win rate's decisive comparisons (``wins +
  losses``) for ``wilson``, all comparisons otherwise; ``n_harmful`` for a ``*_harmful`` interval (looked up in
  the enclosing objects too); else the object's own ``n``. A win rate with no decisive comparison shows ``no
  decisive comparisons`` for its decisive rate. Per-item lists (``samples``, ``rows``, ``responses``, ...) and long
  lists of texts are counted, not shown. A distribution (``alignkit.eval.samples.distribution``: mean, std, min,
  p10, p50, p90, max) is one row, ``mean 1.3, std 0.4, min 0.2, p10 0.5, p50 1.2, p90 2.1, max 2.6``.
"""

from __future__ import annotations

import math

MISSING = "n/a"
NO_DECISIVE = "no decisive comparisons"
PER_ITEM = ("samples", "winrate_samples", "rows", "responses", "records", "completions", "generations")
MAX_LIST = 16  # numbers of a list shown one by one; a longer list is summarized
MAX_RECORDS = 10  # objects of a list flattened one by one; a longer list is counted
MAX_JOINED = 200  # characters of a list of texts shown joined
POINT_KEYS = ("mean", "rate", "value", "estimate", "rating", "point")
DISTRIBUTION_KEYS = ("mean", "std", "min", "p10", "p25", "p50", "median", "p75", "p90", "p95", "p99", "max")
BOUNDS = (("low", "high"), ("lo", "hi"), ("lower", "upper"))


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v) -> bool:
    return is_number(v) and math.isfinite(v)


def fmt(v) -> str:
    """A value as shown: floats with 4 significant digits, null / NaN / inf as ``n/a``, anything else as text."""
    if v is None or (is_number(v) and not math.isfinite(v)):
        return MISSING
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def rate(v) -> str:
    """A rate with 3 decimals; null / NaN as ``n/a``."""
    return f"{v:.3f}" if is_finite(v) else MISSING


def interval(value, low, high, n: int | None = None, digits=fmt) -> str:
    """``value [low, high] (n=N)``; the parts that are missing or not finite are left out (``n/a`` if all are)."""
    shown = digits(value) if is_finite(value) else ""
    if is_finite(low) and is_finite(high):
        shown = f"{shown} [{digits(low)}, {digits(high)}]".strip()
    if not shown:
        return MISSING
    return f"{shown} (n={n})" if n is not None else shown


def winrate_cell(e: dict, which: str) -> str:
    """A win-rate entry's ``rate`` with its bootstrap interval (``which`` "rate") or its ``decisive_rate`` with the
    Wilson interval ("decisive"), 3 decimals, with n; ``no decisive comparisons`` when wins + losses is 0."""
    if which == "decisive":
        if e["wins"] + e["losses"] == 0:
            return NO_DECISIVE
        return interval(e["decisive_rate"], *(e["wilson"] or (None, None)), n=e["wins"] + e["losses"], digits=rate)
    n = e["wins"] + e["ties"] + e["losses"]
    return interval(e["rate"], *(e["bootstrap"] or (None, None)), n=n, digits=rate) if n else MISSING


def flatten(data: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(label, shown value) of every field of ``data`` to any depth; see the module doc."""
    rows: list[tuple[str, str]] = []
    _walk(data, prefix, {}, rows)
    return rows


def _walk(d: dict, path: str, counts: dict, rows: list) -> None:
    counts = {**counts, **{k: v for k, v in d.items() if k.startswith("n_") and _is_count(v)}}
    own = _bounds(d)
    if own:  # the object is an interval: one row for it, then its other fields
        point = next((k for k in POINT_KEYS if k in d and (d[k] is None or is_number(d[k]))), None)
        n = d.get("n") if _is_count(d.get("n")) else None
        label = f"{path}.{point}" if path and point else (path or point or "value")
        rows.append((f"{label} [{', '.join(own)}]", interval(d.get(point), d[own[0]], d[own[1]], n)))
        d = {k: v for k, v in d.items() if k not in (*own, point, "n" if n is not None else None)}
    if _is_distribution(d):
        values = [fmt(d[k]) for k in d]
        rows.append((path or "distribution", MISSING if set(values) == {MISSING} else
                     ", ".join(f"{k} {v}" for k, v in zip(d, values))))  # fmt: skip
        return
    intervals = _intervals(d)  # estimate key (or the interval's own key) -> (interval name, low, high)
    taken = {k for k, v in d.items() if _is_bound_sibling(k, d) or _is_list_interval(k, v)}
    for key, value in d.items():
        label = f"{path}.{key}" if path else str(key)
        if key in intervals:
            name, low, high, has_point = intervals[key]
            shown = _interval_row(d, key if has_point else None, name, low, high, counts)
            rows.append((f"{label} [{name}]" if has_point else (f"{path}.{name}" if path else name), shown))
        elif key in taken:
            continue
        elif key == "decisive_rate" and _no_decisive(d):
            rows.append((label, NO_DECISIVE))
        elif isinstance(value, dict):
            _walk(value, label, counts, rows)
        elif isinstance(value, (list, tuple)):
            _list(list(value), key, label, counts, rows)
        else:
            rows.append((label, fmt(value)))


def _list(values: list, key, label: str, counts: dict, rows: list) -> None:
    if not values:
        rows.append((label, "(empty)"))
    elif str(key) in PER_ITEM:
        rows.append((label, f"{_count(values)} (per-item data, not shown)"))
    elif all(v is None or is_number(v) for v in values):
        finite = [v for v in values if is_finite(v)]
        if len(values) <= MAX_LIST:
            shown = ", ".join(fmt(v) for v in values)
            extra = f"mean {fmt(sum(finite) / len(finite))}, n={len(values)}" if finite else f"n={len(values)}"
            rows.append((label, f"{shown} ({extra})" if len(values) > 1 else shown))
        elif finite:
            rows.append((label, f"mean {fmt(sum(finite) / len(finite))}, min {fmt(min(finite))}, max "
                                f"{fmt(max(finite))} (n={len(values)}, {len(values) - len(finite)} n/a)"))  # fmt: skip
        else:
            rows.append((label, f"{MISSING} (n={len(values)})"))
    elif all(isinstance(v, str) for v in values):
        joined = ", ".join(values)
        rows.append((label, joined if len(joined) <= MAX_JOINED else f"{len(values)} texts (not shown)"))
    elif len(values) <= MAX_RECORDS:
        for i, v in enumerate(values):
            if isinstance(v, dict):
                _walk(v, f"{label}[{i}]", counts, rows)
            elif isinstance(v, (list, tuple)):
                _list(list(v), i, f"{label}[{i}]", counts, rows)
            else:
                rows.append((f"{label}[{i}]", fmt(v)))
    else:
        rows.append((label, f"{_count(values)} (not shown)"))


def _is_distribution(d: dict) -> bool:
    return "mean" in d and len(d) >= 3 and all(k in DISTRIBUTION_KEYS and _bound(v) for k, v in d.items())


def _count(values: list) -> str:
    return "1 item" if len(values) == 1 else f"{len(values)} items"


# ---- intervals ----


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bound(v) -> bool:
    return v is None or is_number(v)


def _bounds(d: dict) -> tuple[str, str] | None:
    """The keys of the bounds when ``d`` itself is an interval object."""
    return next(((lo, hi) for lo, hi in BOUNDS if lo in d and hi in d and _bound(d[lo]) and _bound(d[hi])), None)


def _is_interval_name(key) -> bool:
    key = str(key).lower()
    return "interval" in key or key in ("wilson", "bootstrap", "ci") or key.endswith("_ci")


def _is_list_interval(key, v) -> bool:
    return _is_interval_name(key) and isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_bound, v))


def _is_bound_sibling(key, d: dict) -> bool:
    key = str(key)
    for suffix, other in (("_low", "_high"), ("_high", "_low")):
        if key.endswith(suffix) and _bound(d[key]):
            sibling = key[: -len(suffix)] + other
            return sibling in d and _bound(d[sibling])
    return False


def _intervals(d: dict) -> dict:
    """{row key: (interval name, low, high, has an estimate)}: the row key is the estimate's key, else the key the
    interval is written under (its ``X_low`` for sibling bounds)."""
    found = []
    for key, v in d.items():
        if _is_list_interval(key, v):
            found.append((key, str(key), v[0], v[1]))
        elif str(key).endswith("_low") and _is_bound_sibling(key, d):
            base = str(key)[:-4]
            found.append((key, base, d[key], d[base + "_high"]))
    out = {}
    for where, name, low, high in found:
        point = next((p for p in _estimates(name) if p in d and _bound(d[p]) and p not in out), None)
        out[point if point is not None else where] = (name, low, high, point is not None)
    return out


def _estimates(name: str) -> list[str]:
    """Candidate keys of the estimate an interval named ``name`` belongs to, best first."""
    if name == "wilson":
        return ["decisive_rate"]
    if name == "bootstrap":
        return ["rate", "mean"]
    out = []
    if "interval" in name:
        out += [name.replace("_interval", ""), name.replace("interval_", ""), name.replace("interval", "rate"),
                name.replace("interval", "mean")]  # fmt: skip
    if name.endswith("_ci"):
        out.append(name[:-3])
    if name in ("interval", "ci"):
        out += ["accuracy", "rate", "mean", "value", "estimate"]
    return [k for k in dict.fromkeys(out) if k and k != name]


def _interval_row(d: dict, key: str | None, name: str, low, high, counts: dict) -> str:
    point = d.get(key) if key is not None else None
    wins, ties, losses = d.get("wins"), d.get("ties"), d.get("losses")
    if all(_is_count(x) for x in (wins, ties, losses)):  # a win rate
        if name == "wilson" or key == "decisive_rate":
            return NO_DECISIVE if wins + losses == 0 else interval(point, low, high, wins + losses)
        return interval(point, low, high, wins + ties + losses)
    suffix = name.rsplit("_", 1)[-1]
    n = counts.get(f"n_{suffix}") if "_" in name else None
    if n is None and _is_count(d.get("n")):
        n = d["n"]
    return interval(point, low, high, n)


def _no_decisive(d: dict) -> bool:
    return _is_count(d.get("wins")) and _is_count(d.get("losses")) and d["wins"] + d["losses"] == 0
