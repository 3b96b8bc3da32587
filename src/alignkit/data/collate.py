"""Batches with dynamic padding: every tensor is padded to the longest sequence in the batch only.

Masks are built from lengths, never from the pad id (SmolLM2 pads with its EOS, which completions contain).
"""

from __future__ import annotations

import torch

from alignkit.data.tokenize import TokenizedCompletion, TokenizedPair


def pad_sequences(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int, pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion rows.

    Returns ``input_ids``, ``attention_mask``, ``completion_mask``, each ``(n, seq)`` with seq the longest
    row (rounded up to ``pad_to_multiple_of``); ``completion_mask`` is 1 on completion tokens only.
    """
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    seq = -(-max(lengths) // pad_to_multiple_of) * pad_to_multiple_of
    n = len(lengths)
    input_ids = torch.full((n, seq), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, seq), dtype=torch.long)
    completion_mask = torch.zeros((n, seq), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, : len(p) + len(c)] = 1
        completion_mask[i, len(p) : len(p) + len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def collate_pairs(pairs: list[TokenizedPair], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Chosen and rejected of each pair in one batch for a single forward.

    Rows ``0..B-1`` are the chosen completions and rows ``B..2B-1`` the rejected ones, in pair order:
    tensors are ``(2B, seq)``.
    """
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return pad_sequences(prompts, completions, pad_id, pad_to_multiple_of)


def collate_completions(
    items: list[TokenizedCompletion], pad_id: int, pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """One row per prompt + completion: ``(B, seq)`` tensors, plus ``labels`` ``(B,)`` for binary feedback."""
    batch = pad_sequences([x.prompt_ids for x in items], [x.completion_ids for x in items], pad_id, pad_to_multiple_of)
    if items and items[0].label is not None:
        batch["labels"] = torch.tensor([bool(x.label) for x in items])
    return batch
