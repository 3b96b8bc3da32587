"""A vs B from files of responses, judged by a reward model or ensemble, or by a verifier: matched prompts ->
outcomes -> win rate.

Each file holds records with ``prompt`` and ``response`` (or ``completion``, or the one-element ``completions`` list
``alignkit generate --out`` writes), optionally ``category``. Prompts are
matched by their text; each of A's prompts must appear once in B. A reward model is a pointwise judge, so the order
in which the two responses are shown cannot matter: outcome = 1 when A's reward exceeds B's by more than
``margin``, 0 when B's exceeds A's by more than ``margin``, else a tie. Length is counted in characters.

A verifier (``judge_by_verifier``: any reward function of ``alignkit.rewards``, e.g. ``math`` against the records'
``answer``) scores both sides the same way; prompts it cannot score (no gold answer, a timeout) are left out and
counted. The records' other fields (``answer``, ``tests``, ...) reach it as columns, A's record first, then B's.

A policy can also be given as a model: ``responses_from_model`` samples its responses to prompt records and returns
them as the same ``(source, record)`` list a file gives, so ``match_responses`` pairs them unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from alignkit.errors import UserError
from alignkit.eval.winrate import WinRate, win_rate


@dataclass
class Matched:
    """Responses of A and B to the same prompts, in A's order; ``sources``: A's ``file:line`` per prompt."""

    prompts: list[str]
    a: list[str]
    b: list[str]
    categories: list[str] | None
    sources: list[str]
    columns: dict[str, list] | None = None  # the records' other fields (answer, tests, ...), aligned with prompts


def record_response(record: dict, source: str) -> str:
    """The response text of a record (``response``, ``completion``, or a one-element ``completions``)."""
    for name in ("response", "completion"):
        if isinstance(record.get(name), str):
            return record[name]
    completions = record.get("completions")  # `alignkit generate --out` writes a list
    if isinstance(completions, list) and completions:
        first = completions[0].get("text") if isinstance(completions[0], dict) else completions[0]
        if len(completions) != 1 or not isinstance(first, str):
            raise UserError(f"{source}: field 'completions' holds {len(completions)} responses. Fix: generate one "
                            "per prompt (--n 1) or give a 'response' field")  # fmt: skip
        return first
    raise UserError(f"{source}: field 'response' is missing. Fix: give each record a prompt and a response text")


def record_prompt(record: dict, source: str) -> str:
    """The prompt text of a record; a ``UserError`` naming ``source`` when it has none."""
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{source}: field 'prompt' is missing or empty. Fix: give each record a prompt text")
    return prompt


_TEXT_FIELDS = {"prompt", "response", "completion", "completions", "category"}


def _columns(records: list[dict]) -> dict[str, list]:
    """Fields other than the texts, one list per name aligned with ``records`` (None where a record lacks it)."""
    names = sorted({k for r in records for k in r if k not in _TEXT_FIELDS})
    return {k: [r.get(k) for r in records] for k in names}


def match_responses(a_records: list, b_records: list) -> Matched:
    """Pair ``(source, record)`` lists of A and B by prompt text; every problem names its file:line."""
    if not a_records:
        raise UserError("A has no records. Fix: give a file with prompt/response records")
    b_by_prompt: dict[str, tuple[str, str, dict]] = {}
    for source, record in b_records:
        prompt = record_prompt(record, source)
        if prompt in b_by_prompt:
            raise UserError(f"{source}: prompt repeats {b_by_prompt[prompt][0]}. Fix: one response per prompt")
        b_by_prompt[prompt] = (source, record_response(record, source), record)
    prompts, a, b, cats, sources, seen, fields = [], [], [], [], [], {}, []
    for source, record in a_records:
        prompt = record_prompt(record, source)
        if prompt in seen:
            raise UserError(f"{source}: prompt repeats {seen[prompt]}. Fix: one response per prompt")
        seen[prompt] = source
        if prompt not in b_by_prompt:
            raise UserError(f"{source}: prompt {json.dumps(prompt[:60])} has no response in B. Fix: answer the same "
                            "prompts in both files")  # fmt: skip
        prompts.append(prompt)
        a.append(record_response(record, source))
        b.append(b_by_prompt[prompt][1])
        cats.append(record.get("category"))
        sources.append(source)
        fields.append({**b_by_prompt[prompt][2], **{k: v for k, v in record.items() if v is not None}})
    categories = [str(c) for c in cats] if all(c is not None for c in cats) else None
    return Matched(prompts, a, b, categories, sources, _columns(fields))


def responses_from_model(
    name: str,
    prompts: list,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    cache: dict | None = None,
) -> list[tuple[str, dict]]:
    """Responses of model ``name`` (model dir, LoRA adapter dir, hub id or the embedded default) to ``prompts``:
    ``(source, record)`` pairs of records with ``prompt`` (and optionally ``category``), as a reader gives them ->
    ``(source, {"prompt", "response", other fields})`` in the same order, one completion per prompt (temperature 0 =
    greedy; prompt i samples with seed ``seed + i``). ``cache``: ``{name: alignkit.generation.ReadySampler}``, looked
    up before loading ``name`` and filled after (a model against itself loads once)."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens is {max_new_tokens}. Fix: generate at least 1 token")
    if temperature < 0:
        raise UserError(f"temperature is {temperature}. Fix: use 0 (greedy) or a positive temperature")
    if not prompts:
        raise UserError("no prompts to answer. Fix: give a file with prompt records")
    texts = [record_prompt(record, source) for source, record in prompts]  # bad records fail before loading
    cache = {} if cache is None else cache
    if name not in cache:
        from alignkit.generation import load_sampler

        cache[name] = load_sampler(name, device)
    generator = cache[name]
    completions = generator.generate(texts, n=1, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    out = []
    for (source, record), text, group in zip(prompts, texts, completions):
        row = {k: v for k, v in record.items() if k not in _TEXT_FIELDS or k == "category"}
        out.append((source, {"prompt": text, "response": group[0].text, **row}))
    return out


def _judge(matched: Matched, score_a: list, score_b: list, margin: float, seed: int, kind: str):
    """Scores of both sides ``(n,)`` (None = unscored) -> (the win rate on the prompts scored on both sides, one
    record per prompt with ``{kind}_a``/``{kind}_b`` and the outcome (None where left out), the indices kept)."""
    outcomes = [
        None if sa is None or sb is None else 1.0 if sa - sb > margin else 0.0 if sb - sa > margin else 0.5
        for sa, sb in zip(score_a, score_b)
    ]
    kept = [i for i, o in enumerate(outcomes) if o is not None]
    length_diff = [len(x) - len(y) for x, y in zip(matched.a, matched.b)]
    cats = [matched.categories[i] for i in kept] if matched.categories else None
    result = win_rate([outcomes[i] for i in kept], [length_diff[i] for i in kept], cats, seed=seed) if kept else None
    rows = [
        {"source": s, "prompt": p, "response_a": x, "response_b": y, f"{kind}_a": sa, f"{kind}_b": sb, "outcome": o,
         "length_diff": d}
        for s, p, x, y, sa, sb, o, d in zip(matched.sources, matched.prompts, matched.a, matched.b, score_a, score_b,
                                            outcomes, length_diff)
    ]  # fmt: skip
    return result, rows, kept


def judge_by_reward(
    matched: Matched, reward_model, how: str = "mean", margin: float = 0.0, batch_size: int = 8, seed: int = 0
) -> tuple[WinRate, list[dict]]:
    """Score both sides with ``reward_model`` (an ``alignkit.reward_model.RewardModel``, aggregated by ``how``) ->
    (the win rate of A, one record per prompt with both responses, both rewards and the outcome)."""
    if margin < 0:
        raise UserError(f"margin is {margin}. Fix: use a margin >= 0 (rewards closer than it are ties)")
    reward_a = reward_model.reward(matched.prompts, matched.a, how=how, batch_size=batch_size)[0].tolist()
    reward_b = reward_model.reward(matched.prompts, matched.b, how=how, batch_size=batch_size)[0].tolist()
    result, rows, _ = _judge(matched, reward_a, reward_b, margin, seed, "reward")
    return result, rows


def judge_by_verifier(
    matched: Matched, verifier, margin: float = 0.0, workers: int = 2, seed: int = 0
) -> tuple[WinRate, list[dict], int]:
    """Score both sides with ``verifier`` (a reward-function spec: ``math``, ``code``, ``module:function``, or a
    ``RewardSpec``), run by ``alignkit.rewards.RewardRunner`` with the records' fields as columns -> (the win rate of
    A on the prompts both sides were scored on, one record per prompt with both scores (None where unscored) and
    the outcome (None where left out), the number of prompts left out)."""
    from alignkit.judges import VerifierJudge

    if margin < 0:
        raise UserError(f"margin is {margin}. Fix: use a margin >= 0 (scores closer than it are ties)")
    n = len(matched.prompts)
    columns = {k: v + v for k, v in (matched.columns or {}).items()}
    judge = VerifierJudge(verifier, workers=workers)
    try:  # both sides in one batch
        scores = judge.score(matched.prompts + matched.prompts, matched.a + matched.b, columns=columns)
    finally:
        judge.close()
    result, rows, kept = _judge(matched, scores[:n], scores[n:], margin, seed, "score")
    if not kept:
        name = verifier if isinstance(verifier, str) else getattr(verifier, "name", "verifier")
        raise UserError(f"verifier {name!r} scored none of the {n} prompts (both sides). Fix: give records the "
                        "fields it needs, e.g. 'answer' for math, 'tests' for code")  # fmt: skip
    return result, rows, n - len(kept)


def describe(result: WinRate, a: str = "A", b: str = "B") -> list[str]:
    """Human-readable lines of a win rate."""
    decisive = result.wins + result.losses
    lines = [
        f"{a} vs {b} on {result.n} prompts: {result.wins} wins, {result.ties} ties, {result.losses} losses",
        f"win rate (decisive) {result.decisive_rate:.3f}, 95% Wilson interval over the {decisive} decisive prompts "
        f"[{result.wilson[0]:.3f}, {result.wilson[1]:.3f}]"
        if decisive
        else "win rate (decisive): no decisive comparisons (every prompt a tie)",
        f"win rate (ties as half) {result.rate:.3f}, 95% bootstrap interval over prompts "
        f"[{result.bootstrap[0]:.3f}, {result.bootstrap[1]:.3f}]"
        if result.n and all(map(math.isfinite, (result.rate, *result.bootstrap)))
        else "win rate (ties as half): n/a (no prompts judged)",
        "length-controlled win rate "
        + (f"{result.length_controlled:.3f}" if result.length_controlled is not None else "n/a (cannot be fitted)"),
    ]
    for cat, r in result.per_category.items():
        rate = f"{r.rate:.3f}" if math.isfinite(r.rate) else "n/a"
        lines.append(f"  {cat}: {r.wins}/{r.ties}/{r.losses} (w/t/l), ties-as-half {rate}")
    return lines
