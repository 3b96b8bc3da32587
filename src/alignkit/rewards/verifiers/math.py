"""Math answers: pull the final answer out of a completion and check it against the gold answer.

- ``extract_answer``: GSM8K ``#### N`` first, then the last ``\\boxed{...}`` / ``\\fbox{...}``, then "the answer
  is N" / "Answer: N", then the last number in the text. Numbers come back cleaned: ``$1,234.`` -> ``1234``,
  ``50%`` stays ``50%``, ``3/4`` and ``-3`` as written.
- ``answers_match``: numbers are compared as numbers (relative tolerance 1e-6) and that verdict is final; anything
  else (LaTeX: ``\\frac{1}{2}``, ``\\sqrt{2}/2``, sets, intervals) goes to math-verify.
- ``math_reward``: 1.0 / 0.0 per completion, ``None`` where the record has no gold answer.
- ``math_format_reward``: 1.0 when the completion states its final answer explicitly, else 0.0.

Percent: ``%`` is read as a unit and dropped, so ``50%`` == ``50`` and ``50%`` != ``0.5``: GSM8K-style golds are
bare numbers ("What percent ...? #### 50"), and a model answering "50%" there is right.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from fractions import Fraction
from typing import Any, NamedTuple

MATH_VERIFY_TIMEOUT = 3  # seconds, for each of math-verify's parse and verify (signal-based: main thread only)

_NUMBER = r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?%?|-?\$?\.\d+%?"
_NUMBER_TOKEN = re.compile(rf"(?<![\w.])(?:{_NUMBER})|-?\\[dt]?frac\{{\d+\}}\{{\d+\}}")
_NUMBER_FULL = re.compile(rf"(?:{_NUMBER})")
_GSM8K = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_MAX_BOXED = 8  # unclosed \boxed{ tried from the end, at most (bounds the work on adversarial text)
_PHRASE = re.compile(r"(?i)\banswer\b\s*[*_]*\s*(?:is\b\s*:?|:|=)[*_\s]*([^\n]*)")
_INLINE_MATH = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")
_UNITS = re.compile(r"\\(?:text|mbox|mathrm|textbf)\s*\{[^{}]*\}")


# --------------------------------------------------------------------------------------------- extraction


def extract_answer(text: Any) -> str | None:
    """The final answer stated in ``text`` (see the module docstring for the order); None if there is none."""
    if not isinstance(text, str):
        return None
    marked = _marked_answer(text)
    if marked is not None:
        return marked
    numbers = _NUMBER_TOKEN.findall(text)
    return _clean(numbers[-1]) if numbers else None


def extract_gold(gold: Any) -> str | None:
    """The gold answer: marked like a completion (``####``, ``\\boxed``, "the answer is"); else the whole text.

    Unlike a completion, unmarked gold text is taken whole, not its last number, so a bare LaTeX gold such
    as ``\\frac{1}{2}`` stays itself. Numbers in JSON (``18``) are fine; None or empty -> None.
    """
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, (int, float)):
        gold = repr(gold)
    if not isinstance(gold, str) or not gold.strip():
        return None
    marked = _marked_answer(gold)
    return marked if marked is not None else _clean(gold)


def _marked_answer(text: str) -> str | None:
    gsm8k = _GSM8K.findall(text)
    if gsm8k and gsm8k[-1].strip():
        return _from_phrase(gsm8k[-1])
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return _clean(boxed)
    phrases = _PHRASE.findall(text)
    if phrases and phrases[-1].strip():
        return _from_phrase(phrases[-1])
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces balanced); None if none closes."""
    for start in reversed([m.end() for m in _BOXED.finditer(text)][-_MAX_BOXED:]):
        depth = 1
        for brace in _BRACE.finditer(text, start):
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                return text[start : brace.start()]
    return None


def _from_phrase(rest: str) -> str:
    """What follows "the answer is" or "####": a leading number, else inline math, else any number, else the text."""
    rest = rest.strip()
    lead = _NUMBER_TOKEN.match(rest)
    if lead:
        return _clean(lead.group())
    math_ = _INLINE_MATH.search(rest)
    if math_:
        return _clean(math_.group(1) or math_.group(2))
    numbers = _NUMBER_TOKEN.findall(rest)
    if numbers:
        return _clean(numbers[0])
    return _clean(re.split(r"\.\s|\.$", rest, maxsplit=1)[0])


def _clean(answer: str) -> str:
    """Strip spaces, a trailing period and markdown emphasis; a plain number loses ``$`` and thousands commas."""
    answer = answer.strip().strip("*_").strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    if len(answer) > 1 and answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    if _NUMBER_FULL.fullmatch(answer):
        answer = answer.replace("$", "").replace(",", "")
    return answer


# --------------------------------------------------------------------------------------------- equivalence


def to_number(answer: str) -> Fraction | None:
    """``answer`` as an exact number if it is one: ``1,000``, ``$18``, ``\\$18``, ``50%`` (-> 50), ``3/4``,
    ``\\frac{3}{4}``, ``18 \\text{ eggs}``, ``-0``; else None."""
    s = _UNITS.sub("", answer)
    for token in ("\\$", "$", "\\%", "%", "\\!", "\\,", "{,}", " "):
        s = s.replace(token, "")
    s = s.rstrip(".")
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", s)
    if frac:
        s = "{}{}/{}".format(*frac.groups())
    if re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d+)?", s) and any(c.isdigit() for c in s):
        s = s.replace(",", "")
    elif not re.fullmatch(r"-?\d+/\d+", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(pred: Any, gold: Any) -> bool:
    """Whether two extracted answers are the same; never raises (bad input -> False).

    Both numbers: equal within a relative tolerance of 1e-6 (final, math-verify is not asked). Otherwise
    math-verify decides, with its own timeouts when called from the main thread (it uses ``signal.alarm``) and
    without them elsewhere (run it under ``RewardRunner``, whose worker processes have a per-call timeout).
    """
    if not isinstance(pred, str) or not isinstance(gold, str) or not pred.strip() or not gold.strip():
        return False
    try:
        a, b = to_number(pred), to_number(gold)
        if a is not None and b is not None:
            return a == b or math.isclose(float(a), float(b), rel_tol=1e-6)
        return _math_verify(pred, gold)
    except Exception:
        return False


class _NoTimeoutNotice(logging.Filter):
    """math-verify warns on every call made without its signal-based timeout, which only the main thread can
    use; off the main thread (environment steps, server threads) that is expected, so the notice is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_NoTimeoutNotice())


def _math_verify(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    timeout = MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None
    parsed = []
    for s in (gold, pred):
        latex = s if any(t in s for t in ("$", "\\(", "\\[", "\\boxed")) else f"${s}$"
        p = parse(latex, parsing_timeout=timeout)
        if not p:
            return False
        parsed.append(p)
    return bool(verify(parsed[0], parsed[1], timeout_seconds=timeout))


# --------------------------------------------------------------------------------------------- rewards


class Grade(NamedTuple):
    reward: float | None  # 1.0 right, 0.0 wrong (or no answer found), None: no gold answer
    extracted: str | None
    gold: str | None


def grade(completion: Any, gold: Any) -> Grade:
    """Extract both answers and compare them."""
    gold_answer = extract_gold(gold)
    extracted = extract_answer(_text(completion))
    if gold_answer is None:
        return Grade(None, extracted, None)
    return Grade(
        1.0 if extracted is not None and answers_match(extracted, gold_answer) else 0.0, extracted, gold_answer
    )


def math_reward(prompts: list, completions: list[str], answer: list | None = None, **_: Any) -> list[float | None]:
    """1.0 where the completion's final answer equals the gold ``answer`` column, else 0.0; None without a gold.

    ``answer`` items: a GSM8K worked solution ending in ``#### N``, a bare number, or LaTeX.
    """
    if answer is None:
        return [None] * len(completions)
    return [grade(c, g).reward for c, g in zip(completions, answer)]


def math_format_reward(prompts: list, completions: list[str], **_: Any) -> list[float | None]:
    """1.0 where the completion states its final answer explicitly (``#### N``, ``\\boxed{...}`` or "the answer
    is N" / "Answer: N"), else 0.0. Meant as a small extra term next to ``math`` (e.g. weight 0.1)."""
    return [1.0 if isinstance(t := _text(c), str) and _marked_answer(t) is not None else 0.0 for c in completions]


def _text(completion: Any) -> Any:
    """A completion as text: conversations (assistant messages) are joined."""
    if isinstance(completion, (list, tuple)):
        return "\n".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return completion
