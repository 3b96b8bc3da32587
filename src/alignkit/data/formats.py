"""Validated examples: records of any supported column convention become typed examples.

Each side of an example is plain text (``str``) or a conversation (a tuple of ``{"role", "content"}`` dicts).
Column conventions follow TRL's:

- Pairwise: ``prompt``/``chosen``/``rejected``; or implicit prompt, ``chosen``/``rejected`` holding whole
  dialogues (the prompt is their shared beginning), including Anthropic hh-rlhf transcripts with
  "\\n\\nHuman:" / "\\n\\nAssistant:" turns, which become conversations.
- SFT: ``prompt``/``completion``; ``messages`` (the last assistant turn is the completion); ``text``
  (the whole text is scored).
- Binary (thumbs up/down): ``prompt``/``completion``/``label`` (bool).
- Prompt-only: ``prompt``.

Problems are collected per record with its source (``file:line``) and field, then handled by the policy
``error`` (stop, listing them) or ``skip`` (count them and go on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from alignkit.errors import DataError

Conversation = tuple  # tuple[dict[str, str], ...]
Content = Union[str, Conversation]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class PairwiseExample:
    prompt: Content
    chosen: Content
    rejected: Content
    source: str


@dataclass(frozen=True)
class SFTExample:
    prompt: Content  # "" or () when the whole text/conversation is scored
    completion: Content
    source: str


@dataclass(frozen=True)
class BinaryExample:
    prompt: Content
    completion: Content
    label: bool
    source: str


@dataclass(frozen=True)
class PromptExample:
    prompt: Content
    source: str
    columns: dict = field(default_factory=dict)  # the record's other fields (gold answers, tests), for rewards


class InvalidRecord(Exception):
    """One bad field of one record."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}': {problem}")
        self.field, self.problem = field, problem


# --------------------------------------------------------------------------------------------- parsing

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> Conversation | None:
    """ "\\n\\nHuman: ... \\n\\nAssistant: ..." -> conversation; None if ``text`` has no such turns."""
    if not _HH_TURN.search(text) and not text.startswith(("Human:", "Assistant:")):
        return None
    parts = _HH_TURN.split("\n\n" + text if text.startswith(("Human:", "Assistant:")) else text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return tuple(messages)


def _content(record: dict, field: str, *, allow_empty: bool = False) -> Content:
    if field not in record or record[field] is None:
        raise InvalidRecord(field, "is missing")
    value = record[field]
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise InvalidRecord(field, "is empty")
        return value
    if isinstance(value, (list, tuple)):
        return _conversation(value, field, allow_empty)
    raise InvalidRecord(field, f"must be text or a list of {{role, content}} messages, got {type(value).__name__}")


def _conversation(value: list | tuple, field: str, allow_empty: bool) -> Conversation:
    if not value and not allow_empty:
        raise InvalidRecord(field, "is an empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidRecord(f"{field}[{i}]", 'must be a {"role": ..., "content": ...} message')
        if m["role"] not in ROLES:
            raise InvalidRecord(f"{field}[{i}].role", f"is {m['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise InvalidRecord(f"{field}[{i}].content", f"must be text, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def _completion(value: Content, field: str) -> Content:
    """A completion must have text, and as a conversation only assistant turns."""
    if isinstance(value, tuple):
        if any(m["role"] != "assistant" for m in value):
            raise InvalidRecord(field, "a conversational completion may only hold assistant messages")
        if not any(m["content"].strip() for m in value):
            raise InvalidRecord(field, "is empty (the assistant message has no text)")
    elif not value.strip():
        raise InvalidRecord(field, "is empty")
    return value


def _check_prompt_before_completion(prompt: Content, completion: Content, field: str) -> None:
    if isinstance(prompt, tuple) != isinstance(completion, tuple):
        raise InvalidRecord(field, "mixes plain text and chat messages with the prompt; use one form for both")
    if isinstance(prompt, tuple) and prompt and prompt[-1]["role"] == "assistant":
        raise InvalidRecord("prompt", "ends with an assistant message; it should end with the user turn")


def _split_implicit(chosen: Content, rejected: Content) -> tuple[Content, Content, Content]:
    """Shared beginning of two dialogues -> (prompt, chosen completion, rejected completion)."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        c_conv, r_conv = parse_hh_transcript(chosen), parse_hh_transcript(rejected)
        if c_conv is not None and r_conv is not None:
            chosen, rejected = c_conv, r_conv
        else:
            n = 0
            while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
                n += 1
            while n > 0 and not chosen[n - 1].isspace():  # do not split a word
                n -= 1
            return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, tuple) and isinstance(rejected, tuple):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        while n > 0 and chosen[n - 1]["role"] == "assistant":  # the completion starts at an assistant turn
            n -= 1
        if n == 0:
            raise InvalidRecord("chosen", "chosen and rejected share no prompt; add a 'prompt' field")
        return chosen[:n], chosen[n:], rejected[n:]
    raise InvalidRecord("rejected", "chosen and rejected must both be text or both be messages")


def to_pairwise(record: Any, source: str) -> PairwiseExample:
    if not isinstance(record, dict):
        raise InvalidRecord("record", f"must be an object with prompt/chosen/rejected, got {type(record).__name__}")
    chosen, rejected = _content(record, "chosen", allow_empty=True), _content(record, "rejected", allow_empty=True)
    if "prompt" in record and record["prompt"] is not None:
        prompt = _content(record, "prompt")
        if isinstance(prompt, str) and isinstance(chosen, tuple):  # TRL allows a text prompt with message completions
            prompt = ({"role": "user", "content": prompt},)
    else:
        prompt, chosen, rejected = _split_implicit(chosen, rejected)
    chosen, rejected = _completion(chosen, "chosen"), _completion(rejected, "rejected")
    _check_prompt_before_completion(prompt, chosen, "chosen")
    _check_prompt_before_completion(prompt, rejected, "rejected")
    if chosen == rejected:
        raise InvalidRecord("rejected", "is identical to chosen; a pair must differ")
    return PairwiseExample(prompt, chosen, rejected, source)


def to_sft(record: Any, source: str) -> SFTExample:
    if not isinstance(record, dict):
        raise InvalidRecord("record", f"must be an object, got {type(record).__name__}")
    if "messages" in record:
        messages = _content(record, "messages")
        if isinstance(messages, str):
            raise InvalidRecord("messages", "must be a list of {role, content} messages")
        last = max((i for i, m in enumerate(messages) if m["role"] != "assistant"), default=-1) + 1
        if last >= len(messages):
            raise InvalidRecord("messages", "must end with at least one assistant message to learn from")
        return SFTExample(messages[:last], _completion(messages[last:], "messages"), source)
    if "completion" in record:
        prompt = _content(record, "prompt", allow_empty=True) if record.get("prompt") is not None else ""
        completion = _completion(_content(record, "completion", allow_empty=True), "completion")
        if isinstance(prompt, str) and isinstance(completion, tuple):
            prompt = ({"role": "user", "content": prompt},) if prompt else ()
        _check_prompt_before_completion(prompt, completion, "completion")
        return SFTExample(prompt, completion, source)
    if "text" in record:
        return SFTExample("", _completion(_content(record, "text"), "text"), source)
    raise InvalidRecord("completion", "is missing; SFT records need prompt/completion, messages, or text")


def to_binary(record: Any, source: str) -> BinaryExample:
    if not isinstance(record, dict):
        raise InvalidRecord("record", f"must be an object, got {type(record).__name__}")
    prompt = _content(record, "prompt")
    completion = _completion(_content(record, "completion", allow_empty=True), "completion")
    if "label" not in record or record["label"] is None:
        raise InvalidRecord("label", "is missing; use true (desirable) or false (undesirable)")
    if not isinstance(record["label"], bool):
        raise InvalidRecord("label", f"is {record['label']!r}; use true or false (JSON booleans)")
    if isinstance(prompt, str) and isinstance(completion, tuple):
        prompt = ({"role": "user", "content": prompt},)
    _check_prompt_before_completion(prompt, completion, "completion")
    return BinaryExample(prompt, completion, record["label"], source)


def to_prompt(record: Any, source: str, prompt_field: str = "prompt", template: str | None = None) -> PromptExample:
    """A prompt-only record: the prompt from ``prompt_field`` (text or messages), the other fields kept as
    ``columns``. A preference pair without a prompt field gives its implicit prompt (hh-rlhf transcripts).

    ``template`` (text prompts): a ``str.format`` pattern over the record's fields, e.g.
    ``"{question}\nGive the final answer after ####."``."""
    if not isinstance(record, dict):
        raise InvalidRecord("record", f"must be an object, got {type(record).__name__}")
    if record.get(prompt_field) is None and prompt_field == "prompt" and {"chosen", "rejected"} <= set(record):
        # a preference pair (e.g. hh-rlhf transcripts): its prompt is the shared beginning of the two dialogues
        pair = to_pairwise(record, source)
        return PromptExample(pair.prompt, source, {k: v for k, v in record.items() if k not in ("chosen", "rejected")})
    if record.get(prompt_field) is None:
        others = ", ".join(k for k in record if isinstance(record[k], str)) or "none"
        raise InvalidRecord(prompt_field, f"is missing (text fields here: {others}); set data.prompt_field to "
                            "the field that holds the prompt")  # fmt: skip
    prompt = _content(record, prompt_field)
    if template is not None and isinstance(prompt, str):
        try:
            prompt = template.format(**record)
        except KeyError as e:
            raise InvalidRecord(e.args[0], f"is missing (data.prompt_template uses {{{e.args[0]}}})") from None
        except (IndexError, ValueError, TypeError, AttributeError) as e:  # e.g. {meta[id]} when meta is text
            raise InvalidRecord(prompt_field, f"data.prompt_template {template!r} cannot be filled: {e}") from None
    return PromptExample(prompt, source, {k: v for k, v in record.items() if k != prompt_field})


def as_chat(prompt: Content, completion: Content) -> tuple[Content, Content]:
    """Text as a one-turn conversation: prompt -> a user message, completion -> an assistant message.

    Conversations pass unchanged; an empty text prompt (plain text scored as a whole) stays text. Used where a
    model must see data the way a chat policy does (reward models, best-of-N with a different tokenizer).
    """
    if isinstance(prompt, str) and isinstance(completion, str):
        if not prompt:
            return prompt, completion
        return ({"role": "user", "content": prompt},), ({"role": "assistant", "content": completion},)
    if isinstance(prompt, str):
        prompt = ({"role": "user", "content": prompt},) if prompt else ()
    if isinstance(completion, str):
        completion = ({"role": "assistant", "content": completion},)
    return prompt, completion


def validate_records(
    records: list[tuple[str, Any]], convert: Callable[[Any, str], Any], on_invalid: str = "error", max_listed: int = 20
) -> tuple[list, list[str]]:
    """Convert every record; returns (examples, problems). ``on_invalid="error"`` raises listing the problems."""
    examples, problems = [], []
    for source, record in records:
        try:
            examples.append(convert(record, source))
        except InvalidRecord as e:
            problems.append(f"{source}: {e}")
    if problems and on_invalid == "error":
        listed = "\n  ".join(problems[:max_listed])
        more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        raise DataError(
            f"{len(problems)} invalid record(s):\n  {listed}{more}\n"
            "Fix: correct these records, or set data.on_invalid=skip to drop them."
        )
    return examples, problems
