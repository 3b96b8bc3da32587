"""Completion texts for prompts, on the batched KV-cache sampler (``generation.sampler.Sampler``).

Identical prompts in one call are sampled as one prompt with ``n`` samples (prefilled once; best-of-N passes
``[prompt] * N``); prompt ``i`` (its first occurrence) samples with seed ``seed + i``.
"""

from __future__ import annotations

import torch

from alignkit.data.formats import Content
from alignkit.data.tokenize import Tokenizer
from alignkit.generation.sampler import Sampler, SamplingParams


def generate(
    model,
    tokenizer,
    prompts: list[Content],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int | None = 0,
    chat: bool = True,
) -> list[str]:
    """Completions for ``prompts`` (text, or lists of messages), one per prompt. ``temperature=0`` is greedy.

    With ``chat=True`` a text prompt is sent as one user message through the chat template (if the tokenizer has
    one). ``batch_size``: rows decoded together. ``seed=None`` draws the seed from torch's global generator.
    Returns the decoded completions without the prompt and special tokens, stripped.
    """
    sampler = Sampler(model, Tokenizer(tokenizer), max_rows=max(1, batch_size))
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()))
    ids = [sampler.prompt_ids(p, chat) for p in prompts]
    positions: dict[tuple[int, ...], list[int]] = {}  # distinct prompt -> where it occurs
    for i, x in enumerate(ids):
        positions.setdefault(tuple(x), []).append(i)
    by_count: dict[int, list[list[int]]] = {}  # samples needed -> the distinct prompts needing that many
    for where in positions.values():
        by_count.setdefault(1 if temperature == 0 else len(where), []).append(where)  # greedy: one is enough
    texts = [""] * len(prompts)
    for count, groups in by_count.items():
        params = SamplingParams(n=count, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        samples = sampler.sample([ids[g[0]] for g in groups], params, [seed + g[0] for g in groups])
        for where, completions in zip(groups, samples):
            for k, i in enumerate(where):
                texts[i] = completions[k % count].text.strip()
    return texts
