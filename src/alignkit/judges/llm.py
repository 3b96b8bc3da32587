"""An LLM judge: a chat model asked, with a rubric or a constitution principle, which of two responses is better
(or whether one response is good), run locally or behind an OpenAI-compatible endpoint.

    (prompt, A, B, principle) -> judge prompt (``alignkit.judges.prompts``: rubric, delimited and escaped data)
      logprobs: + assistant prefix "Verdict: [[" -> next-token log-probs of "A" / "B" -> p_a = P(A) / (P(A) + P(B))
      generate: greedy answer -> ``parse_verdict`` -> A / B / tie, or unjudged (None) when unreadable

``logprobs`` mode reads the judge's exact confidence from one forward pass (no parsing, no sampling); over HTTP it
asks for the first token's top log-probs and falls back to generation for a call whose endpoint returns none.
An LLM sees the responses in order, so it is not order-invariant: ``judge_pairs`` asks it both ways.
"""

from __future__ import annotations

import math
from typing import Sequence

from alignkit.config import EMBEDDED_MODEL
from alignkit.data.formats import Content
from alignkit.errors import ConfigError
from alignkit.judges.base import Judge, Verdict
from alignkit.judges.prompts import (
    DEFAULT_RUBRIC,
    LABELS,
    SCORE_PREFIX,
    VERDICT_PREFIX,
    YES_NO,
    compare_messages,
    parse_verdict,
    parse_yes_no,
    principle_name,
    score_messages,
)

MODES = ("logprobs", "generate")
OUTCOME = {"A": 1.0, "B": 0.0, "tie": 0.5}


def _text(response) -> str:
    """A response as text (a conversational completion: its messages' contents)."""
    return response if isinstance(response, str) else "\n\n".join(m["content"] for m in response)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


class LLMJudge(Judge):
    """See the module docstring. ``model``: a local model (dir, hub id, the embedded default) or, with
    ``base_url``, the served model's name; ``batch_size``: rows per forward pass, or requests in flight over HTTP;
    ``tie_margin``: |p_a - 0.5| up to which a logprobs verdict is a tie."""

    order_invariant = False

    def __init__(
        self,
        model: str = EMBEDDED_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        rubric: str | None = None,
        mode: str = "logprobs",
        device: str = "auto",
        max_new_tokens: int = 64,
        timeout: float = 60.0,
        tie_margin: float = 0.0,
        batch_size: int = 8,
        name: str = "",
    ):
        checks = [
            (isinstance(model, str) and bool(model), "model", f"name a model directory, hub id or {EMBEDDED_MODEL}"),
            (mode in MODES, "mode", f"use one of {', '.join(MODES)}"),
            (base_url is None or (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))),
             "base_url", "give the endpoint's http(s) URL, e.g. http://127.0.0.1:8000/v1, or leave it unset"),
            (rubric is None or (isinstance(rubric, str) and bool(rubric.strip())), "rubric",
             "give the rubric text, or leave it unset for the default helpfulness/harmlessness rubric"),
            (isinstance(max_new_tokens, int) and max_new_tokens >= 1, "max_new_tokens", "generate at least 1 token"),
            (isinstance(timeout, (int, float)) and timeout > 0, "timeout", "use a positive number of seconds"),
            (isinstance(tie_margin, (int, float)) and 0 <= tie_margin < 0.5, "tie_margin", "use a value in [0, 0.5)"),
            (isinstance(batch_size, int) and batch_size >= 1, "batch_size", "use a positive integer"),
        ]  # fmt: skip
        for ok, option, fix in checks:
            if not ok:
                raise ConfigError(f"judge.{option} is {locals()[option]!r}. Fix: {fix}")
        self.model, self.base_url, self.mode = model, base_url, mode
        self.rubric = rubric or DEFAULT_RUBRIC
        self.max_new_tokens, self.tie_margin, self.batch_size = max_new_tokens, float(tie_margin), batch_size
        self.name = name or (f"llm:{model}@{base_url}" if base_url else f"llm:{model}")
        if base_url:
            from alignkit.judges.llm_backends import HTTPBackend

            self.backend = HTTPBackend(base_url, model, api_key, float(timeout), batch_size)
        else:
            from alignkit.judges.llm_backends import LocalBackend

            self.backend = LocalBackend(model, device, batch_size)

    # ------------------------------------------------------------------------------------------ pairwise

    def compare(
        self, prompts: Sequence[Content], a: Sequence[str], b: Sequence[str], principles: Sequence | None = None,
        columns: dict[str, list] | None = None,
    ) -> list[Verdict]:  # fmt: skip
        """One verdict per prompt, A shown first; ``detail``: mode, principle, log-probs or the raw answer."""
        principles = self._aligned(prompts, principles, a, b)
        specials = self.backend.specials
        conversations = [
            compare_messages(p, _text(x), _text(y), pr, self.rubric, specials)
            for p, x, y, pr in zip(prompts, a, b, principles)
        ]
        details = [{"mode": self.mode, "principle": principle_name(pr)} for pr in principles]
        verdicts: list[Verdict | None] = [None] * len(conversations)
        todo = list(range(len(conversations)))
        if self.mode == "logprobs":
            todo = []
            rows = self.backend.label_logprobs(conversations, VERDICT_PREFIX, LABELS)
            for i, (logps, info) in enumerate(rows):
                details[i].update(info)
                if logps is not None:
                    p_a = _sigmoid(logps["A"] - logps["B"])
                    details[i].update(logp_a=logps["A"], logp_b=logps["B"])
                    verdicts[i] = Verdict(self._outcome(p_a), p_a, details[i])
                elif "fallback" in info:
                    todo.append(i)
                else:
                    verdicts[i] = Verdict(None, None, details[i])
        if todo:
            answers = self.backend.generate([conversations[i] for i in todo], self.max_new_tokens)
            for i, (text, info) in zip(todo, answers):
                details[i].update(info, raw=text)
                label = parse_verdict(text)
                verdicts[i] = Verdict(None if label is None else OUTCOME[label], None, details[i])
        return verdicts

    def _outcome(self, p_a: float) -> float:
        return 1.0 if p_a > 0.5 + self.tie_margin else 0.0 if p_a < 0.5 - self.tie_margin else 0.5

    # ------------------------------------------------------------------------------------------ pointwise

    def score(
        self, prompts: Sequence[Content], responses: Sequence[str], principles: Sequence | None = None,
        columns: dict[str, list] | None = None,
    ) -> list[float | None]:  # fmt: skip
        """P(Yes) / (P(Yes) + P(No)) to "is this response good?" (logprobs), or 1.0 / 0.0 from a generated yes or
        no (generate); None = unjudged."""
        principles = self._aligned(prompts, principles, responses)
        conversations = [
            score_messages(p, _text(r), pr, self.rubric, self.backend.specials)
            for p, r, pr in zip(prompts, responses, principles)
        ]
        scores: list[float | None] = [None] * len(conversations)
        todo = list(range(len(conversations)))
        if self.mode == "logprobs":
            todo = []
            for i, (logps, info) in enumerate(self.backend.label_logprobs(conversations, SCORE_PREFIX, YES_NO)):
                if logps is not None:
                    scores[i] = _sigmoid(logps["Yes"] - logps["No"])
                elif "fallback" in info:
                    todo.append(i)
        if todo:
            for i, (text, _) in zip(todo, self.backend.generate([conversations[i] for i in todo], self.max_new_tokens)):
                yes = parse_yes_no(text)
                scores[i] = None if yes is None else float(yes)
        return scores

    # ------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _aligned(prompts: Sequence, principles, *responses: Sequence) -> list:
        """One principle (or None) per prompt: a single ``Principle`` or text applies to all."""
        if any(len(r) != len(prompts) for r in responses):
            raise ValueError(f"{len(prompts)} prompts and {[len(r) for r in responses]} responses: give one each")
        if principles is None or isinstance(principles, str) or hasattr(principles, "comparison"):
            return [principles] * len(prompts)
        if len(principles) != len(prompts):
            raise ValueError(f"{len(principles)} principles for {len(prompts)} prompts: give one (or None) each")
        return list(principles)

    def close(self) -> None:
        self.backend.close()
