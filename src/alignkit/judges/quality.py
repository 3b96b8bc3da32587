"""How good is a judge? Agreement with human preference labels, and self-consistency across orders.

On pairs a person labelled (``chosen`` preferred over ``rejected``), the judge compares the two responses:

- ``agreement``: the share of decisive verdicts that pick the human's choice, with a 95% Wilson interval;
  ``agreement_ties_half``: ties count as half, over every judged pair;
- ``self_consistency`` (an order-sensitive judge, both orders): the share whose two orders agreed;
- ``first_position_rate``: of the decisive single-order verdicts, the share that picked the response shown first
  (0.5 = no position bias);
- ``judged``: the share with a verdict at all (unparseable output, no gold answer: unjudged, never guessed).

With ``both_orders`` False, which response is shown first is randomized per pair (seeded), so a judge that always
says "A" scores 0.5, not 1.
"""

from __future__ import annotations

import math

import numpy as np

from alignkit.judges.base import Judge, judge_pairs, response_text
from alignkit.stats import wilson_interval


def judge_agreement(judge: Judge, examples: list, both_orders: bool = True, seed: int = 0) -> dict:
    """``examples``: ``PairwiseExample``s (human: chosen > rejected) -> the statistics above, plus ``rows``."""
    n = len(examples)
    prompts = [x.prompt for x in examples]
    chosen, rejected = [response_text(x.chosen) for x in examples], [response_text(x.rejected) for x in examples]
    if both_orders or judge.order_invariant:
        verdicts = judge_pairs(judge, prompts, chosen, rejected, both_orders=both_orders)
        chosen_first = [True] * n
    else:
        chosen_first = (np.random.default_rng(seed).random(n) < 0.5).tolist()
        a = [c if f else r for c, r, f in zip(chosen, rejected, chosen_first)]
        b = [r if f else c for c, r, f in zip(chosen, rejected, chosen_first)]
        verdicts = [v if f else v.swapped() for v, f in zip(judge.compare(prompts, a, b), chosen_first)]
    outcomes = [v.outcome for v in verdicts]  # in chosen's terms
    judged = [o for o in outcomes if o is not None]
    decisive = [o for o in judged if o != 0.5]
    agree = sum(o == 1.0 for o in decisive)
    out = {
        "judge": judge.name,
        "pairs": n,
        "judged": len(judged) / n if n else float("nan"),
        "ties": sum(o == 0.5 for o in judged),
        "agreement": agree / len(decisive) if decisive else float("nan"),
        "agreement_interval": list(wilson_interval(agree, len(decisive))),
        "agreement_ties_half": float(np.mean(judged)) if judged else float("nan"),
        "both_orders": bool(both_orders and not judge.order_invariant),
        "order_invariant": bool(judge.order_invariant),
    }
    asked = [v.detail.get("consistent") for v in verdicts if v.detail.get("consistent") is not None]
    if asked:
        out["self_consistency"] = sum(asked) / len(asked)
    # an order-invariant judge scores each response alone: "shown first" means nothing to it
    firsts = [] if judge.order_invariant else _first_position_picks(verdicts, chosen_first, both_orders)
    if firsts:
        out["first_position_rate"] = sum(firsts) / len(firsts)
    p = [v.p_a for v in verdicts if v.p_a is not None]
    if p:
        out["mean_confidence"] = float(np.mean([max(x, 1 - x) for x in p]))
    out["rows"] = [
        {"source": x.source, "outcome": v.outcome, "p_chosen": v.p_a, "consistent": v.detail.get("consistent"),
         "first": v.detail.get("first"), "second": v.detail.get("second"), "raw": v.detail.get("raw")}
        for x, v in zip(examples, verdicts)
    ]  # fmt: skip
    return out


def _first_position_picks(verdicts, chosen_first: list, both: bool) -> list[bool]:
    """Per decisive single-order verdict: did it pick the response shown first?"""
    picks = []
    for v, first in zip(verdicts, chosen_first):
        if both:  # detail: "first" = chosen shown first (chosen's terms), "second" = rejected shown first
            for shown_first_is_chosen, o in ((True, v.detail.get("first")), (False, v.detail.get("second"))):
                if o is not None and o != 0.5:
                    picks.append((o == 1.0) == shown_first_is_chosen)
        elif v.outcome is not None and v.outcome != 0.5:
            picks.append((v.outcome == 1.0) == first)
    return picks


def describe_agreement(r: dict) -> list[str]:
    lo, hi = r["agreement_interval"]
    orders = "scores each response alone" if r.get("order_invariant") else (
        "both orders" if r["both_orders"] else "one order")  # fmt: skip
    judged = f"{r['judged']:.3f}" if math.isfinite(r["judged"]) else "n/a"
    lines = [f"{r['judge']} on {r['pairs']} human-labelled pairs ({orders}):", f"  judged {judged}, ties {r['ties']}"]
    if math.isfinite(r["agreement"]):
        lines.append(f"  agreement with the human label {r['agreement']:.3f} (decisive verdicts), 95% Wilson "
                     f"[{lo:.3f}, {hi:.3f}]; ties as half {r['agreement_ties_half']:.3f}")  # fmt: skip
    else:
        lines.append("  agreement with the human label: no decisive verdicts (every judged pair a tie)")
    if "self_consistency" in r:
        lines.append(f"  self-consistency across orders {r['self_consistency']:.3f}")
    if "first_position_rate" in r:
        lines.append(f"  picks the response shown first {r['first_position_rate']:.3f} of the time (0.5 = unbiased)")
    elif r.get("order_invariant"):
        lines.append("  position bias: none possible (the judge never sees the two responses together)")
    if "mean_confidence" in r:
        lines.append(f"  mean confidence {r['mean_confidence']:.3f}")
    return lines
