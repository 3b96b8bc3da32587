"""Examples -> token ids, with the prompt/completion boundary exact and only completion tokens scored.

Conversations are rendered with the tokenizer's chat template once, as a whole; the completion is the
rendered text after the rendered prompt (with the generation prompt). Both parts are tokenized without
adding special tokens, so a template that writes BOS, or a default system prompt, appears exactly once.
A BOS is prepended only when the tokenizer adds one by itself and the rendered prompt does not carry it.
Every completion ends with EOS: text after the last EOS the template writes (e.g. a newline) is dropped,
and EOS is appended when missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from alignkit.data.formats import BinaryExample, Content, PairwiseExample, PromptExample, SFTExample
from alignkit.errors import DataError


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str


@dataclass(frozen=True)
class TokenizedCompletion:
    """One prompt + completion (SFT, binary feedback); ``label`` for binary feedback."""

    prompt_ids: list[int]
    completion_ids: list[int]
    source: str
    label: bool | None = None


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt for online methods: its ids as generation sees them, the prompt itself and the record's other
    fields (for reward functions), and ``index``, its position in the data set (it seeds the prompt's samples)."""

    prompt_ids: list[int]
    prompt: Content
    columns: dict
    source: str
    index: int


@dataclass(frozen=True)
class KTOItem:
    """A KTO example: the labelled completion and another item's completion (``kl_completion_ids``) scored after
    this prompt for the KL reference point; ``ref_*``: the reference's summed log-probs of both."""

    prompt_ids: list[int]
    completion_ids: list[int]
    kl_completion_ids: list[int]  # another item's completion, for the KL reference point
    label: bool
    source: str
    ref_logp: float = 0.0
    ref_kl_logp: float = 0.0


@dataclass
class Sample:
    """One sampled completion of one prompt and what the update needs. Per-token lists are ``(L,)``, aligned with
    ``completion_ids``; ``advantages`` is one value per sequence (GRPO/RLOO) or per token (PPO)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logps: list[float]
    finish_reason: str
    text: str
    group: int  # the prompt's position among this process's prompts of the step
    reward: float | None = None
    advantages: list[float] = field(default_factory=list)
    old_logps: list[float] | None = None
    ref_logps: list[float] | None = None
    values: list[float] | None = None
    returns: list[float] | None = None
    weight: float = 1.0  # 0: left out of the loss (no reward, or a masked overlong completion)
    # multi-turn episodes: 1 on the model's tokens, 0 on observation tokens (left out of the loss and the KL)
    action_mask: list[int] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def action_tokens(self) -> int:
        """The completion tokens the model generated (all of them, unless observations sit between its turns)."""
        return len(self.completion_ids) if self.action_mask is None else sum(self.action_mask)

    def actions_only(self, values: list[float]) -> list[float]:
        """Per-token ``values`` ``(L,)`` with 0 at observation tokens."""
        if self.action_mask is None:
            return values
        return [v if m else 0.0 for v, m in zip(values, self.action_mask)]


@dataclass
class TruncationStats:
    prompts_truncated: int = 0
    completions_truncated: int = 0
    skipped: int = 0
    skipped_sources: list[str] = field(default_factory=list)

    def summary(self) -> str:
        first = f" (first: {self.skipped_sources[0]})" if self.skipped_sources else ""
        return (
            f"{self.prompts_truncated} prompt(s) truncated, {self.completions_truncated} completion(s) "
            f"truncated, {self.skipped} record(s) skipped for length{first}"
        )


class Tokenizer:
    """Wraps a HF tokenizer with the boundary and special-token rules above."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.eos_id = hf_tokenizer.eos_token_id
        if self.eos_id is None:
            raise DataError("the tokenizer has no EOS token. Fix: set tokenizer.eos_token before training")
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else self.eos_id
        bos = hf_tokenizer.bos_token_id
        probe = hf_tokenizer("a").input_ids
        self.auto_bos = bos if (bos is not None and probe and probe[0] == bos) else None

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False).input_ids if text else []

    def render_prompt(self, prompt: Content) -> str:
        """Prompt as text: conversations through the chat template with the generation prompt."""
        if isinstance(prompt, str):
            return prompt
        self._need_template()
        if not prompt:
            return ""
        return self.hf.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)

    def with_bos(self, prompt_ids: list[int]) -> list[int]:
        """``prompt_ids`` with the BOS the tokenizer adds by itself, unless the rendered prompt already carries it."""
        if self.auto_bos is not None and (not prompt_ids or prompt_ids[0] != self.auto_bos):
            return [self.auto_bos] + prompt_ids
        return prompt_ids

    def prompt_ids(self, prompt: Content) -> list[int]:
        """Token ids of a prompt as generation sees it (chat template with the generation prompt), as ``split``
        tokenizes the prompt of a prompt/completion example."""
        return self.with_bos(self.encode(self.render_prompt(prompt)))

    def takes_tools(self) -> bool:
        """Whether the chat template renders a ``tools`` list itself (Qwen2.5, Llama 3.1, Hermes, ...)."""
        return "tools" in (getattr(self.hf, "chat_template", None) or "")

    def tool_prompt_ids(self, messages: list[dict], tools: list[dict]) -> list[int]:
        """Prompt ids of an episode's opening ``messages`` with the JSON schemas of its ``tools``: passed to the chat
        template when it renders tools, else listed in the system message between ``<tools>`` tags (the Hermes
        format, which models without a tool template have seen most)."""
        self._need_template()
        messages = [dict(m) for m in messages]
        if tools and self.takes_tools():
            text = self.hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
            return self.with_bos(self.encode(text))
        if tools:
            listing = "Tools:\n<tools>\n" + "\n".join(json.dumps(t) for t in tools) + "\n</tools>"
            if messages and messages[0].get("role") == "system":
                messages[0]["content"] = f"{messages[0]['content']}\n\n{listing}"
            else:
                messages.insert(0, {"role": "system", "content": listing})
        return self.prompt_ids(tuple(messages))

    def observation_ids(self, messages: list[dict]) -> list[int]:
        """Token ids between an assistant turn that ended with EOS and the next assistant turn: what the template
        writes after the turn's EOS, the ``messages`` (tool results, user turns) and the generation prompt."""
        self._need_template()
        base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        closed = self.hf.apply_chat_template(base, tokenize=False)
        full = self.hf.apply_chat_template(base + [dict(m) for m in messages], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
        if not full.startswith(closed):
            raise DataError(
                "the chat template renders a conversation differently once more messages follow, so observation "
                "tokens cannot be appended to a turn. Fix: use a template whose renderings extend each other"
            )
        tail = closed[closed.rfind("a") + 1 :]
        eos = self.hf.eos_token or ""
        tail = tail[len(eos) :] if eos and tail.startswith(eos) else tail
        return self.encode(tail + full[len(closed) :])

    def split(self, prompt: Content, completion: Content) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids) of one prompt + completion."""
        if isinstance(completion, str):
            prompt_ids, completion_ids = self.encode(prompt), self.encode(completion)
        else:
            self._need_template()
            full = self.hf.apply_chat_template(list(prompt) + list(completion), tokenize=False)
            prompt_text = self.render_prompt(prompt)
            if not full.startswith(prompt_text):
                prompt_text = self.hf.apply_chat_template(list(prompt), tokenize=False) if prompt else ""
                if not full.startswith(prompt_text):
                    raise DataError(
                        "the chat template renders the prompt differently alone and with the completion, "
                        "so the completion boundary cannot be found. Fix: use a template whose prompt "
                        "rendering is a prefix of the full conversation"
                    )
            prompt_ids, completion_ids = self.encode(prompt_text), self.encode(full[len(prompt_text) :])
        prompt_ids = self.with_bos(prompt_ids)
        if self.eos_id in completion_ids:
            last = len(completion_ids) - 1 - completion_ids[::-1].index(self.eos_id)
            completion_ids = completion_ids[: last + 1]
        else:
            completion_ids = completion_ids + [self.eos_id]
        return prompt_ids, completion_ids

    def _need_template(self) -> None:
        if not getattr(self.hf, "chat_template", None):
            raise DataError(
                "the data holds chat messages but the tokenizer has no chat template. Fix: use a "
                "chat model, set tokenizer.chat_template, or give the data as plain text"
            )


def fit_lengths(
    prompt: list[int],
    completions: list[list[int]],
    max_length: int,
    max_prompt_length: int | None,
    keep: str,
    policy: str,
    stats: TruncationStats,
    source: str,
    bos_id: int | None = None,
):
    """Apply the length limits to a prompt and its completions; None when the record is skipped.

    Only a record that is too long is cut: first its prompt, to ``max_prompt_length`` (default
    ``max_length // 2``), keeping the end (and a leading ``bos_id``, the BOS the tokenizer adds by itself) or
    the start; then completions, to what remains. ``policy`` is truncate | skip | error.
    """
    longest = max(len(c) for c in completions)
    if len(prompt) + longest <= max_length:
        return prompt, completions
    if policy == "error":
        raise DataError(
            f"{source}: {len(prompt) + longest} tokens, over data.max_length={max_length}. "
            "Fix: raise data.max_length, or set data.overlong to truncate or skip"
        )
    if policy == "skip":
        stats.skipped += 1
        stats.skipped_sources.append(source)
        return None
    max_prompt = max_prompt_length if max_prompt_length is not None else max_length // 2
    if len(prompt) > max_prompt:
        if keep == "keep_end":
            head = prompt[:1] if bos_id is not None and prompt[0] == bos_id else []
            prompt = head + prompt[len(prompt) - (max_prompt - len(head)) :]
        else:
            prompt = prompt[:max_prompt]
        stats.prompts_truncated += 1
    budget = max_length - len(prompt)
    if longest > budget:
        completions = [c[:budget] for c in completions]
        stats.completions_truncated += 1
    return prompt, completions


def tokenize_pairs(
    examples: list[PairwiseExample],
    tok: Tokenizer,
    max_length: int,
    max_prompt_length: int | None,
    keep: str = "keep_end",
    policy: str = "truncate",
) -> tuple[list[TokenizedPair], TruncationStats]:
    stats, out = TruncationStats(), []
    for ex in examples:
        prompt, chosen = tok.split(ex.prompt, ex.chosen)
        prompt_r, rejected = tok.split(ex.prompt, ex.rejected)
        if prompt_r != prompt:  # same prompt text always gives the same ids; guard against odd templates
            raise DataError(f"{ex.source}: prompt tokenizes differently for chosen and rejected")
        fitted = fit_lengths(
            prompt, [chosen, rejected], max_length, max_prompt_length, keep, policy, stats, ex.source, tok.auto_bos
        )
        if fitted is not None:
            out.append(TokenizedPair(fitted[0], fitted[1][0], fitted[1][1], ex.source))
    return out, stats


def tokenize_completions(
    examples: list[SFTExample | BinaryExample],
    tok: Tokenizer,
    max_length: int,
    max_prompt_length: int | None,
    keep: str = "keep_end",
    policy: str = "truncate",
) -> tuple[list[TokenizedCompletion], TruncationStats]:
    stats, out = TruncationStats(), []
    for ex in examples:
        prompt, completion = tok.split(ex.prompt, ex.completion)
        fitted = fit_lengths(
            prompt, [completion], max_length, max_prompt_length, keep, policy, stats, ex.source, tok.auto_bos
        )
        if fitted is not None:
            out.append(TokenizedCompletion(fitted[0], fitted[1][0], ex.source, getattr(ex, "label", None)))
    return out, stats


def tokenize_prompts(
    examples: list[PromptExample],
    tok: Tokenizer,
    max_prompt_length: int,
    keep: str = "keep_end",
    policy: str = "truncate",
    chat: bool = True,
) -> tuple[list[TokenizedPrompt], TruncationStats]:
    """Prompt-only examples -> ``TokenizedPrompt``s. With ``chat`` (and a tokenizer with a chat template) a text
    prompt becomes one user message, as chat models are prompted; prompts over ``max_prompt_length`` tokens are
    truncated (keeping ``keep``), skipped or refused, by ``policy``."""
    stats, out = TruncationStats(), []
    use_chat = chat and bool(getattr(tok.hf, "chat_template", None))
    for ex in examples:
        prompt = ex.prompt
        if use_chat and isinstance(prompt, str):
            prompt = ({"role": "user", "content": prompt},)
        ids = tok.prompt_ids(prompt)
        fitted = fit_lengths(
            ids, [[]], max_prompt_length, max_prompt_length, keep, policy, stats, ex.source, tok.auto_bos
        )
        if fitted is not None:
            out.append(TokenizedPrompt(fitted[0], prompt, ex.columns, ex.source, len(out)))
    return out, stats


def tokenize_kto(examples, tok, max_length, max_prompt_length, keep="keep_end", policy="truncate"):
    """Binary examples -> ``KTOItem``s with their mismatched KL completions; returns (items, stats)."""
    items, stats = tokenize_completions(examples, tok, max_length, max_prompt_length, keep, policy)
    n = len(items)
    return [
        KTOItem(
            x.prompt_ids,
            x.completion_ids,
            items[(i + 1) % n].completion_ids[: max_length - len(x.prompt_ids)],
            bool(x.label),
            x.source,
        )
        for i, x in enumerate(items)
    ], stats
