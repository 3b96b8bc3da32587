"""The judge interface: a prompt and two responses -> a verdict; a prompt and one response -> a score or a label.

Every judge (reward model or ensemble, verifier, LLM judge) implements ``compare`` and ``score``:

- ``compare(prompts, a, b, principles=None, columns=None) -> list[Verdict]``: one verdict per prompt, A shown first.
  ``Verdict.outcome`` is in A's terms (1 A better, 0 B better, 0.5 tie) or None = unjudged (the judge's output
  could not be read, the verifier had no gold answer, a call failed); an unjudged comparison is counted, never
  turned into a preference. ``Verdict.p_a``: the judge's probability that A is better, where it has one.
- ``score(prompts, responses, principles=None, columns=None) -> list[float | None]``: a pointwise score (None =
  unjudged); ``label`` thresholds it into good/bad for KTO.
- ``principles``: one principle (``alignkit.cai.Principle``) or None per prompt, for judges that follow one (LLM);
  ``columns``: the prompt records' other fields aligned with ``prompts`` (``answer=[...]``), for verifiers.

``judge_pairs`` asks a judge in both orders when the order can matter (``order_invariant`` is False: an LLM sees
the responses in sequence) and combines the two verdicts: agreeing verdicts stand; disagreeing ones become ties
(MT-Bench's swap rule, Zheng et al. 2023) or unjudged (``inconsistent="drop"``); ``p_a`` is the mean of both
orders' probabilities (the position-debiased confidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from alignkit.data.formats import Content
from alignkit.errors import ConfigError

INCONSISTENT = ("tie", "drop")


@dataclass
class Verdict:
    """A vs B. ``outcome``: 1 / 0 / 0.5 in A's terms, None = unjudged; ``p_a``: P(A better) when known;
    ``detail``: what the judge said (raw text, per-order verdicts, the principle), for inspection."""

    outcome: float | None
    p_a: float | None = None
    detail: dict = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.outcome is not None

    def swapped(self) -> Verdict:
        """The same verdict in B's terms (for a comparison asked with B shown first)."""
        flip = None if self.outcome is None else 1.0 - self.outcome
        return Verdict(flip, None if self.p_a is None else 1.0 - self.p_a, dict(self.detail))


class Judge:
    """Base class; see the module docstring. ``name`` appears in datasets and reports."""

    name = "judge"
    order_invariant = False  # True: compare(a, b) is compare(b, a).swapped() by construction (pointwise judges)

    def compare(
        self, prompts: Sequence[Content], a: Sequence[str], b: Sequence[str], principles: Sequence | None = None,
        columns: dict[str, list] | None = None,
    ) -> list[Verdict]:  # fmt: skip
        raise NotImplementedError

    def score(
        self, prompts: Sequence[Content], responses: Sequence[str], principles: Sequence | None = None,
        columns: dict[str, list] | None = None,
    ) -> list[float | None]:  # fmt: skip
        raise NotImplementedError

    def label(
        self, prompts: Sequence[Content], responses: Sequence[str], threshold: float,
        principles: Sequence | None = None, columns: dict[str, list] | None = None,
    ) -> list[bool | None]:  # fmt: skip
        """Good (score > ``threshold``) / bad / None (unjudged), for KTO."""
        return [None if s is None else s > threshold for s in self.score(prompts, responses, principles, columns)]

    def close(self) -> None:
        """Release workers or connections; a judge stays usable (they restart on the next call)."""


def response_text(content: Content) -> str:
    """A response as text: itself, or the contents of a conversation's messages (a pair's chosen/rejected)."""
    if isinstance(content, str):
        return content
    return "\n".join(str(m.get("content", "")) for m in content)


def combine_orders(first: Verdict, second: Verdict, inconsistent: str = "tie") -> Verdict:
    """A's verdict from ``first`` (A shown first) and ``second`` (B shown first, already in A's terms)."""
    detail = {"first": first.outcome, "second": second.outcome, **first.detail}
    if second.detail:
        detail["second_detail"] = second.detail
    p = None if first.p_a is None or second.p_a is None else (first.p_a + second.p_a) / 2
    if first.outcome is None or second.outcome is None:
        return Verdict(None, p, {**detail, "consistent": None})
    if first.outcome == second.outcome:
        return Verdict(first.outcome, p, {**detail, "consistent": True})
    return Verdict(0.5 if inconsistent == "tie" else None, p, {**detail, "consistent": False})


def judge_pairs(
    judge: Judge,
    prompts: Sequence[Content],
    a: Sequence[str],
    b: Sequence[str],
    principles: Sequence | None = None,
    columns: dict[str, list] | None = None,
    both_orders: bool = True,
    inconsistent: str = "tie",
) -> list[Verdict]:
    """Verdicts of A vs B per prompt; both orders (one batch) unless the judge is order-invariant or
    ``both_orders`` is False. ``inconsistent``: what a disagreement between the orders becomes, tie or drop."""
    if inconsistent not in INCONSISTENT:
        raise ConfigError(f"inconsistent: {inconsistent!r}. Fix: use one of {', '.join(INCONSISTENT)}")
    if not (len(prompts) == len(a) == len(b)) or (principles is not None and len(principles) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts, {len(a)} A and {len(b)} B responses: give one of each per prompt")
    if judge.order_invariant or not both_orders:
        return judge.compare(prompts, a, b, principles, columns)
    n = len(prompts)
    twice = judge.compare(
        list(prompts) * 2, list(a) + list(b), list(b) + list(a), None if principles is None else list(principles) * 2,
        None if columns is None else {k: list(v) * 2 for k, v in columns.items()},
    )  # fmt: skip
    return [combine_orders(twice[i], twice[n + i].swapped(), inconsistent) for i in range(n)]


def consistency(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Of ``judge_pairs``' verdicts: the share judged, and the share of those whose two orders agreed."""
    n = len(verdicts)
    asked = [v for v in verdicts if v.detail.get("consistent") is not None]
    out = {"n": float(n), "judged": sum(v.judged for v in verdicts) / n if n else float("nan")}
    if asked:
        out["self_consistency"] = sum(bool(v.detail["consistent"]) for v in asked) / len(asked)
    return out
