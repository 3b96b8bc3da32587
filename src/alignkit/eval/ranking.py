"""Several policies ranked by a reward model: responses to the same prompts -> rewards -> pairwise outcomes ->
Bradley-Terry ratings.

    NAME=FILE specs -> records matched by prompt text (every file answers the same prompts)
                    -> rewards (prompts x models), each response scored once
                    -> per prompt, every pair of models: 1 / 0.5 / 0 (ties within ``margin``)
                    -> ``bradley_terry`` ratings with bootstrap intervals, mean rewards, pairwise win rates

Everything after the scoring is a pure function of the reward matrix (``rank``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignkit.errors import UserError
from alignkit.eval.judged import record_prompt, record_response
from alignkit.eval.winrate import bradley_terry


@dataclass
class Responses:
    """Responses of several models to the same prompts, in the first file's prompt order."""

    names: list[str]
    prompts: list[str]
    responses: list[list[str]]  # (prompts, models)


@dataclass
class Ranking:
    """``ratings``: ``{model: (rating, low, high)}`` on the Elo scale, or None when Bradley-Terry ratings do not
    exist for these outcomes (``note`` says why); ``pairwise[a][b]``: a's win rate over b, ties as half."""

    names: list[str]
    prompts: int
    mean_reward: dict[str, float]
    pairwise: dict[str, dict[str, float]]
    ratings: dict[str, tuple[float, float, float]] | None
    note: str = ""

    def order(self) -> list[str]:
        """Models best first: by rating, else by mean reward."""
        if self.ratings is not None:
            return sorted(self.names, key=lambda m: -self.ratings[m][0])
        return sorted(self.names, key=lambda m: -self.mean_reward[m])


def parse_specs(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=FILE`` arguments -> ``[(name, file)]``; names must be unique, at least two."""
    out, seen = [], set()
    for spec in specs:
        name, sep, file = spec.partition("=")
        name, file = name.strip(), file.strip()
        if not sep or not name or not file:
            raise UserError(f"{spec!r} is not NAME=FILE. Fix: name each policy's responses, e.g. dpo=dpo.jsonl")
        if name in seen:
            raise UserError(f"{spec!r}: the name {name!r} is given twice. Fix: give each policy its own name")
        seen.add(name)
        out.append((name, file))
    if len(out) < 2:
        raise UserError(f"{len(out)} polic{'y' if len(out) == 1 else 'ies'} given. Fix: rank at least two NAME=FILE")
    return out


def _by_prompt(records: list, file: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for source, record in records:
        prompt = record_prompt(record, source)
        if prompt in out:
            raise UserError(f"{source}: prompt repeats {out[prompt][0]}. Fix: one response per prompt")
        out[prompt] = (source, record_response(record, source))
    if not out:
        raise UserError(f"{file} has no records. Fix: give a file with prompt/response records")
    return out


def match_many(named: list[tuple[str, str, list]]) -> Responses:
    """``[(name, file, (source, record) list)]`` -> the responses matched by prompt text. Every file must answer
    exactly the first file's prompts; the error names the file and a prompt it lacks (or has in excess)."""
    tables = [(name, file, _by_prompt(records, file)) for name, file, records in named]
    first_name, first_file, first = tables[0]
    for name, file, table in tables[1:]:
        missing = [p for p in first if p not in table]
        if missing:
            raise UserError(f"{file} ({name}): no response to prompt {json.dumps(missing[0][:60])} (answered in "
                            f"{first[missing[0]][0]}; {len(missing)} missing). Fix: every file must answer the same "
                            "prompts")  # fmt: skip
        extra = [p for p in table if p not in first]
        if extra:
            raise UserError(f"{table[extra[0]][0]} ({name}): prompt {json.dumps(extra[0][:60])} is not in "
                            f"{first_file} ({first_name}; {len(extra)} extra). Fix: every file must answer the "
                            "same prompts")  # fmt: skip
    prompts = list(first)
    responses = [[table[p][1] for _, _, table in tables] for p in prompts]
    return Responses([name for name, _, _ in tables], prompts, responses)


def score_responses(matched: Responses, reward_model, how: str = "mean", batch_size: int = 8) -> np.ndarray:
    """Rewards ``(prompts, models)``: each response scored once by ``reward_model`` (aggregated by ``how``)."""
    k = len(matched.names)
    flat_prompts = [p for p in matched.prompts for _ in range(k)]
    flat_texts = [t for row in matched.responses for t in row]
    scores = reward_model.reward(flat_prompts, flat_texts, how=how, batch_size=batch_size)[0]
    return np.asarray(scores.tolist(), dtype=float).reshape(len(matched.prompts), k)


def comparisons(rewards, names: list[str], margin: float = 0.0) -> list[tuple[str, str, float]]:
    """Per prompt (row of ``rewards`` ``(prompts, models)``), every pair i < j of models: ``(names[i], names[j],
    outcome for i)``: 1 when i's reward exceeds j's by more than ``margin``, 0 the other way round, else 0.5."""
    r = np.asarray(rewards, dtype=float)
    if r.ndim != 2 or r.shape[1] != len(names):
        raise ValueError(f"rewards of shape {r.shape} for {len(names)} models: want (prompts, models)")
    if margin < 0:
        raise UserError(f"margin is {margin}. Fix: use a margin >= 0 (rewards closer than it are ties)")
    out = []
    for row in r:
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                d = row[i] - row[j]
                out.append((names[i], names[j], 1.0 if d > margin else 0.0 if -d > margin else 0.5))
    return out


def pairwise_rates(comps: list[tuple[str, str, float]], names: list[str]) -> dict[str, dict[str, float]]:
    """``{a: {b: a's win rate over b}}`` (ties as half) from ``comparisons``; both directions, no diagonal."""
    total = {a: {b: 0.0 for b in names if b != a} for a in names}
    count = {a: {b: 0 for b in names if b != a} for a in names}
    for a, b, o in comps:
        total[a][b] += o
        total[b][a] += 1.0 - o
        count[a][b] += 1
        count[b][a] += 1
    return {a: {b: total[a][b] / count[a][b] if count[a][b] else float("nan") for b in total[a]} for a in names}


def rank(rewards, names: list[str], margin: float = 0.0, n_boot: int = 200, seed: int = 0) -> Ranking:
    """The ranking of ``names`` from their rewards ``(prompts, models)``: pure, no models."""
    r = np.asarray(rewards, dtype=float)
    comps = comparisons(r, names, margin)
    ratings, note = None, ""
    try:
        ratings = bradley_terry(comps, n_boot=n_boot, seed=seed)
    except ValueError as e:
        note = str(e)
    return Ranking(
        names=list(names), prompts=int(r.shape[0]),
        mean_reward={m: float(r[:, i].mean()) for i, m in enumerate(names)},
        pairwise=pairwise_rates(comps, names), ratings=ratings, note=note,
    )  # fmt: skip


def _null(x: float):
    return None if x is None or not np.isfinite(x) else float(x)


def ranking_json(ranking: Ranking, judge: str = "") -> dict:
    """The ``eval/*.json`` record (kind ``ranking``) of a ``Ranking``; NaN written as null."""
    ratings = {}
    for m in ranking.order():
        rating, low, high = ranking.ratings[m] if ranking.ratings is not None else (None, None, None)
        ratings[m] = {"rating": _null(rating), "low": _null(low), "high": _null(high),
                      "mean_reward": _null(ranking.mean_reward[m])}  # fmt: skip
    out = {"kind": "ranking", "judge": judge, "ratings": ratings,
           "pairwise": {a: {b: _null(x) for b, x in row.items()} for a, row in ranking.pairwise.items()},
           "prompts": ranking.prompts}  # fmt: skip
    if ranking.note:
        out["note"] = ranking.note
    return out


def describe_ranking(ranking: Ranking) -> list[str]:
    """A table, best first: rating with its 95% bootstrap interval, mean reward, win rate against each model."""
    order = ranking.order()
    width = max(5, *(len(m) for m in order))
    cols = [f"vs {m}" for m in order]
    cw = [max(6, len(c)) for c in cols]
    head = f"{'#':>2}  {'model':<{width}}  {'rating':>7}  {'95% interval':>17}  {'mean reward':>11}"
    lines = [f"{len(order)} models on {ranking.prompts} prompts, every pair compared per prompt",
             head + "".join(f"  {c:>{w}}" for c, w in zip(cols, cw))]  # fmt: skip
    for pos, m in enumerate(order, 1):
        if ranking.ratings is not None:
            rating, low, high = ranking.ratings[m]
            rated, interval = f"{rating:7.1f}", f"[{low:7.1f}, {high:7.1f}]"
        else:
            rated, interval = f"{'n/a':>7}", f"{'n/a':>17}"
        cells = "".join(f"  {('-' if o == m else f'{ranking.pairwise[m][o]:.3f}'):>{w}}" for o, w in zip(order, cw))
        lines.append(f"{pos:>2}  {m:<{width}}  {rated}  {interval:>17}  {ranking.mean_reward[m]:11.4f}{cells}")
    lines.append("win rates: the row model's over the column model, ties as half")
    if ranking.note:
        lines.append(f"{ranking.note}; sorted by mean reward")
    return lines


def write_json(path: Path, record: dict) -> Path:
    from alignkit.outputs import write_json_atomic

    return write_json_atomic(path, record)
