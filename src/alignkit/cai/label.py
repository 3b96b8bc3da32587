"""RLAIF: AI preference labels under a constitution (Bai et al. 2022, phase 2; Lee et al. 2023).

    prompt -> K >= 2 responses from the policy (sampled, prompt i seeded by (seed, i))
      -> a principle picked by (seed, i) -> a judge compares responses under it, in both orders (``judge_pairs``)
      -> {"prompt", "chosen", "rejected", "principle", "judge", "confidence", "verdict_first", "verdict_second"}
         for ``alignkit train dpo`` / ``alignkit train rm``

Pairing (``pairing``):

- ``best_worst`` (default): every pair of the prompt's distinct responses is judged (one pair when K = 2); each
  response scores 1 per win and 0.5 per tie (round robin); the pair written is (most wins, fewest wins) and stands on
  their direct verdict. When that verdict is a tie it is skipped as ``tie``; when it prefers the response with fewer
  wins (the judge is intransitive) it is skipped as ``intransitive``.
- ``all``: every judged, untied pair is written (up to K(K-1)/2 per prompt; the pairs of one prompt are correlated).

Skipped and counted: prompts with fewer than two distinct non-empty responses (``too_few_responses``), ties,
unjudged comparisons (the judge could not read its output, a verifier had no gold answer) and intransitive ones.
``confidence`` is the judge's position-debiased probability that chosen is better (mean of both orders); None when
the judge gives none. ``verdict_first`` / ``verdict_second``: the verdict in chosen's terms (1 chosen, 0 rejected,
0.5 tie) with chosen shown first / second; an order-invariant judge (reward model, verifier) is asked once, so its
``verdict_second`` is None and the summary has no self-consistency for it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Callable

from alignkit.cai.constitution import derive_seed, load_constitution
from alignkit.cai.revise import (
    RED_TEAM,
    as_example,
    beside,
    check_outputs,
    generate,
    load_prompts,
    uses_chat,
)
from alignkit.config import EMBEDDED_MODEL, require, setting
from alignkit.eval.samples import text_summary
from alignkit.outputs import write_json_atomic

PAIRINGS = ("best_worst", "all")
SKIPS = ("too_few_responses", "tie", "unjudged", "intransitive")
DEFAULT_JUDGE = f"llm:{EMBEDDED_MODEL}"


@dataclass
class LabelConfig:
    """``alignkit cai label``; every field can be set in YAML (``--config``), ``--set field=value`` or its option."""

    policy: str = setting(EMBEDDED_MODEL, "The model whose responses are compared (dir, hub id or the embedded one).")
    prompts: str = setting(RED_TEAM, "Prompt records (a prompt field; other fields go to the judge as columns).")
    prompt_field: str = setting("prompt", "The field holding the prompt.")
    limit: int | None = setting(None, "Use N prompts, taken round-robin over categories (all when None).")
    samples: int = setting(2, "Responses per prompt (K >= 2).")
    pairing: str = setting("best_worst", "best_worst: one pair per prompt by round-robin wins; all: every judged pair.",
                           PAIRINGS)  # fmt: skip
    temperature: float = setting(1.0, "Sampling temperature of the policy (> 0, so the K responses differ).")
    max_new_tokens: int = setting(128, "Tokens per response.")
    judge: str = setting(DEFAULT_JUDGE, "reward_model:DIR, verifier:math or llm:MODEL (alignkit.judges.load_judge).")
    constitution: str | None = setting(None, "A constitution YAML; None = the shipped one.")
    principles: list = setting([], "Use only these principles (names); [] = all.")
    inconsistent: str = setting("tie", "What a disagreement between the two orders becomes: tie or drop (unjudged).")
    seed: int = setting(0, "Seed of sampling and principle choice.")
    out: str = setting("runs/cai/preferences.jsonl", "Preference pairs (alignkit train dpo / rm --data FILE).")
    summary: str | None = setting(None, "Counts and judge consistency; None = OUT with .summary.json.")
    overwrite: bool = setting(False, "Replace outputs that already exist.")
    device: str = setting("auto", "auto, cpu, cuda or mps.")

    def validate(self, where: str = "cai label") -> None:
        require(self.samples >= 2, where, "samples", self.samples, "sample at least 2 responses per prompt")
        require(self.pairing in PAIRINGS, where, "pairing", self.pairing, f"use one of {', '.join(PAIRINGS)}")
        require(self.temperature > 0, where, "temperature", self.temperature, "sample with a temperature > 0")
        require(self.max_new_tokens >= 1, where, "max_new_tokens", self.max_new_tokens, "generate at least 1 token")
        require(self.limit is None or self.limit >= 1, where, "limit", self.limit, "use at least 1 prompt")
        require(self.inconsistent in ("tie", "drop"), where, "inconsistent", self.inconsistent, "use tie or drop")
        require(bool(self.out), where, "out", self.out, "name the output file, e.g. runs/cai/preferences.jsonl")

    @property
    def summary_file(self) -> str:
        return self.summary or str(beside(self.out, ".summary.json"))


def _in_terms_of(outcome: float | None, first: bool) -> float | None:
    """An outcome in A's terms as the chosen response's: A is chosen when ``first``."""
    return None if outcome is None else outcome if first else 1.0 - outcome


def _orders(v, chosen_is_a: bool) -> dict:
    """``verdict_first`` / ``verdict_second``: the verdict in chosen's terms with chosen shown first / second."""
    if "first" not in v.detail:  # asked once (an order-invariant judge)
        return {"verdict_first": _in_terms_of(v.outcome, chosen_is_a), "verdict_second": None}
    a_first, b_first = v.detail["first"], v.detail["second"]  # both in A's terms
    if chosen_is_a:
        return {"verdict_first": a_first, "verdict_second": b_first}
    return {"verdict_first": _in_terms_of(b_first, False), "verdict_second": _in_terms_of(a_first, False)}


def pick_pairs(n_responses: int, verdicts: dict[tuple[int, int], object], pairing: str) -> tuple[list, Counter]:
    """Which (chosen, rejected, (a, b)) pairs to write from the verdicts of response pairs ``(a, b)`` (a < b, in
    a's terms), and the skips by reason."""
    skipped: Counter = Counter()
    if pairing == "all":
        out = []
        for (a, b), v in verdicts.items():
            if v.outcome is None:
                skipped["unjudged"] += 1
            elif v.outcome == 0.5:
                skipped["tie"] += 1
            else:
                out.append((a, b, (a, b)) if v.outcome > 0.5 else (b, a, (a, b)))
        return out, skipped
    wins = [0.0] * n_responses
    for (a, b), v in verdicts.items():
        if v.outcome is not None:
            wins[a] += v.outcome
            wins[b] += 1 - v.outcome
    best = max(range(n_responses), key=lambda r: (wins[r], -r))
    worst = min(range(n_responses), key=lambda r: (wins[r], -r))
    key = (min(best, worst), max(best, worst))
    v = verdicts[key] if best != worst else None
    if v is None or v.outcome is None:
        skipped["unjudged" if best != worst else "tie"] += 1
        return [], skipped
    if v.outcome == 0.5:
        skipped["tie"] += 1
        return [], skipped
    winner = key[0] if v.outcome > 0.5 else key[1]
    if winner != best:
        skipped["intransitive"] += 1
        return [], skipped
    return [(best, worst, key)], skipped


def run_label(cfg: LabelConfig, log: Callable = print, judge=None) -> dict:
    """Sample, judge and write the preference pairs of ``cfg``; returns the summary. ``judge``: a built
    ``alignkit.judges.Judge`` to use instead of ``cfg.judge``."""
    from alignkit.data.jsonl import write_jsonl
    from alignkit.generation import load_sampler
    from alignkit.judges import consistency, judge_pairs, load_judge

    cfg.validate()
    check_outputs([cfg.prompts], [cfg.out, cfg.summary_file], cfg.overwrite)
    constitution = load_constitution(cfg.constitution).select(cfg.principles)
    records = load_prompts(cfg.prompts, cfg.prompt_field, cfg.limit)
    judge = judge or load_judge(cfg.judge, "judge", cfg.device)
    gen = load_sampler(cfg.policy, cfg.device)
    chat = uses_chat(gen)
    n = len(records)
    log(f"cai label: {n} prompts from {cfg.prompts}, {cfg.samples} responses each from {cfg.policy}, "
        f"judge {judge.name}")  # fmt: skip
    seeds = [derive_seed(cfg.seed, "policy", i) for i in range(n)]
    sampled = generate(gen, [r["prompt"] for r in records], seeds, cfg.samples, cfg.max_new_tokens, cfg.temperature)
    del gen
    responses = [list(dict.fromkeys(t for t in (c.text.strip() for c in cs) if t)) for cs in sampled]
    principles = [constitution.pick(cfg.seed, i) for i in range(n)]
    keys = sorted({k for r in records for k in r["columns"]})
    asked = [(i, a, b) for i in range(n) for a, b in combinations(range(len(responses[i])), 2)]
    verdicts = judge_pairs(
        judge, [records[i]["prompt"] for i, _, _ in asked], [responses[i][a] for i, a, _ in asked],
        [responses[i][b] for i, _, b in asked], [principles[i] for i, _, _ in asked],
        {k: [records[i]["columns"].get(k) for i, _, _ in asked] for k in keys} if keys else None,
        both_orders=True, inconsistent=cfg.inconsistent,
    ) if asked else []  # fmt: skip
    judge.close()
    by_prompt: dict[int, dict] = {i: {} for i in range(n)}
    for (i, a, b), v in zip(asked, verdicts):
        by_prompt[i][(a, b)] = v
    pairs, skipped = [], Counter()
    for i in range(n):
        if len(responses[i]) < 2:
            skipped["too_few_responses"] += 1
            continue
        chosen_pairs, skips = pick_pairs(len(responses[i]), by_prompt[i], cfg.pairing)
        skipped.update(skips)
        for c, r, key in chosen_pairs:
            v, first = by_prompt[i][key], c == key[0]
            prompt, chosen = as_example(records[i]["prompt"], responses[i][c], chat)
            rejected = as_example(records[i]["prompt"], responses[i][r], chat)[1]
            pairs.append({
                "prompt": prompt, "chosen": chosen, "rejected": rejected, "principle": principles[i].name,
                "judge": judge.name, "confidence": None if v.p_a is None else _in_terms_of(v.p_a, first),
                **_orders(v, first),
                "category": records[i]["category"], "source": records[i]["source"],
            })  # fmt: skip
    summary = {
        "kind": "cai_label", "policy": cfg.policy, "judge": judge.name, "prompts": cfg.prompts, "samples": cfg.samples,
        "pairing": cfg.pairing, "temperature": cfg.temperature, "seed": cfg.seed, "constitution": constitution.source,
        "total_prompts": n, "comparisons": len(asked), "pairs": len(pairs),
        "skipped": {reason: skipped.get(reason, 0) for reason in SKIPS},
        "judge_consistency": consistency(verdicts) if verdicts else {},
        "principles": dict(Counter(p["principle"] for p in pairs)),
        "responses_text": text_summary([t for rs in responses for t in rs]),
        "outputs": {"pairs": cfg.out, "summary": cfg.summary_file},
    }  # fmt: skip
    write_jsonl(cfg.out, pairs)
    write_json_atomic(cfg.summary_file, summary, indent=2)
    return summary


def describe_label(summary: dict) -> list[str]:
    """Printable lines of a ``run_label`` summary."""
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items())
    c = summary["judge_consistency"]
    consistent = f"{c['self_consistency']:.3f}" if "self_consistency" in c else "n/a (order-invariant judge)"
    judged = f"{c['judged']:.3f}" if "judged" in c else "n/a"
    return [
        f"{summary['total_prompts']} prompts, {summary['comparisons']} comparisons by {summary['judge']}: "
        f"{summary['pairs']} pairs written; skipped {sum(summary['skipped'].values())} ({skipped})",
        f"judged {judged} of comparisons; self-consistency across orders {consistent}",
        f"wrote {summary['outputs']['pairs']}, {summary['outputs']['summary']}",
    ]
