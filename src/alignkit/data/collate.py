"""Batches with dynamic padding: every tensor is padded to the longest sequence in the batch only.

Masks are built from lengths, never from the pad id (SmolLM2 pads with its EOS, which completions contain).
"""

from __future__ import annotations

import torch

from alignkit.data.tokenize import KTOItem, Sample, TokenizedCompletion, TokenizedPair


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


def shared_prefix_mask(n_prompt: int, *branches: int) -> torch.Tensor:
    """Who may attend to whom in one ``prompt + branch_1 + ... + branch_k`` sequence: ``(L, L)`` bool, True = may
    attend. Causal; everyone sees the prompt; a branch (completion) sees its own earlier tokens only."""
    kind = torch.tensor([0] * n_prompt + [i + 1 for i, n in enumerate(branches) for _ in range(n)])
    q, k = kind[:, None], kind[None, :]
    return torch.ones(len(kind), len(kind), dtype=torch.bool).tril() & ((k == 0) | (q == k))


def shared_pair_mask(n_prompt: int, n_chosen: int, n_rejected: int) -> torch.Tensor:
    """``shared_prefix_mask`` of a pair: ``prompt + chosen + rejected``, ``(L, L)`` bool."""
    return shared_prefix_mask(n_prompt, n_chosen, n_rejected)


def collate_pairs_shared(pairs: list[TokenizedPair], pad_id: int, packed: bool = False) -> dict[str, torch.Tensor]:
    """Prefix sharing (Wang & Hegde 2024): each pair is one sequence ``prompt + chosen + rejected``, so the prompt
    is encoded once. Rejected tokens see the prompt and earlier rejected tokens only, at the positions they would
    have after the prompt alone; chosen tokens see the prompt and earlier chosen tokens.

    Rows: one right-padded row per pair, ``R = B`` rows of ``T`` = the longest pair; or with ``packed`` all pairs
    back to back in ``R = 1`` row of ``T`` = the sum of their lengths, no padding, plus ``segment_lengths`` ``(B,)``
    (the pair lengths, for ``models.attention.segmented_sdpa``).

    Returns ``input_ids``, ``position_ids`` ``(R, T)``; ``attention_mask`` ``(R, 1, T, T)`` bool (True = may
    attend; block-diagonal when packed; a padding token attends to itself only); and the scored tokens, ``n`` of
    them: ``logp_index`` ``(n,)`` flat index into ``(R * T)`` of the hidden state that predicts each,
    ``logp_labels`` ``(n,)``, and ``logp_segments`` ``(n,)``: chosen of pair b -> b, rejected of pair b -> B + b
    (the ``collate_pairs`` row order). ``completion_tokens`` ``(2B,)`` counts scored tokens per segment;
    ``last_index`` ``(2B,)`` is the flat index of each segment's last token (reward models pool there);
    ``logical_tokens`` is the number of non-padding tokens ``collate_pairs`` would have fed (2P + C + R per pair),
    for throughput.
    """
    b = len(pairs)
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    rows, seq = (1, sum(lengths)) if packed else (b, max(lengths))
    input_ids = torch.full((rows, seq), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, seq), dtype=torch.long)
    mask = torch.zeros((rows, 1, seq, seq), dtype=torch.bool)
    index, labels, segments, counts, logical = [], [], [], [0] * (2 * b), 0
    last, offset = [0] * (2 * b), 0
    for i, p in enumerate(pairs):
        n_p, n_c, n_r = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        total = lengths[i]
        row, s = (0, offset) if packed else (i, 0)  # the pair's row and first column
        offset += total
        base = row * seq + s  # flat index of its first token
        input_ids[row, s : s + total] = torch.tensor(p.prompt_ids + p.chosen_ids + p.rejected_ids)
        position_ids[row, s : s + n_p + n_c] = torch.arange(n_p + n_c)
        position_ids[row, s + n_p + n_c : s + total] = torch.arange(n_p, n_p + n_r)
        mask[row, 0, s : s + total, s : s + total] = shared_pair_mask(n_p, n_c, n_r)
        # token k of a completion is predicted by the hidden state just before it in its own branch
        chosen_from = [n_p - 1 + k for k in range(n_c)]
        rejected_from = [n_p - 1] + [n_p + n_c + k for k in range(n_r - 1)]
        if n_p == 0:  # no prompt: the first completion token has no predecessor and is not scored
            chosen_from, rejected_from = chosen_from[1:], rejected_from[1:]
        for ids, seg, at in ((p.chosen_ids, i, chosen_from), (p.rejected_ids, b + i, rejected_from)):
            ids = ids[len(ids) - len(at) :]
            index += [base + t for t in at]
            labels += ids
            segments += [seg] * len(at)
            counts[seg] = len(at)
        logical += 2 * n_p + n_c + n_r
        last[i], last[b + i] = base + n_p + n_c - 1, base + total - 1
        if not packed:  # padding attends to itself (no empty softmax rows)
            mask[row, 0, range(total, seq), range(total, seq)] = True
    batch = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask,
        "logp_index": torch.tensor(index, dtype=torch.long),
        "logp_labels": torch.tensor(labels, dtype=torch.long),
        "logp_segments": torch.tensor(segments, dtype=torch.long),
        "completion_tokens": torch.tensor(counts, dtype=torch.long),
        "last_index": torch.tensor(last, dtype=torch.long),
        "logical_tokens": torch.tensor(logical),
    }
    if packed:
        batch["segment_lengths"] = torch.tensor(lengths, dtype=torch.long)
    return batch


def collate_groups_shared(prompts: list[list[int]], completions: list[list[int]]) -> dict[str, torch.Tensor]:
    """Prefix sharing for groups of completions of one prompt (GRPO): the completions of a prompt that are adjacent
    in the batch become one segment ``prompt + c_1 + ... + c_k`` (the prompt encoded once; each completion sees the
    prompt and its own earlier tokens, at the positions it has after the prompt alone), and all segments are packed
    back to back in one unpadded row (``segment_lengths`` for ``models.attention.segmented_sdpa``).

    Returns the packed row: ``input_ids``, ``position_ids`` ``(1, T)``, ``attention_mask`` ``(1, 1, T, T)`` bool
    (block diagonal), ``segment_lengths`` ``(S,)``; the ``n`` scored tokens: ``logp_index`` (flat position in the
    row of the hidden state that predicts each), ``logp_labels``, and ``logp_target``, the flat index of the token in
    the ``(B, W)`` right-padded layout of ``pad_sequences`` (W = the longest prompt + completion), where per-token
    values go; and ``logical_tokens``, the non-padding tokens of that layout (for throughput).
    """
    b = len(prompts)
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    groups: list[list[int]] = []
    for i in range(b):
        if groups and prompts[i] == prompts[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    ids, positions, blocks, lengths = [], [], [], []
    index, labels, target, offset = [], [], [], 0
    for group in groups:
        prompt = prompts[group[0]]
        n_p = len(prompt)
        seg_ids, seg_pos = list(prompt), list(range(n_p))
        for i in group:
            c = completions[i]
            start = offset + len(seg_ids)  # where this completion's first token sits in the packed row
            for j in range(len(c)):
                if j == 0 and n_p == 0:
                    continue  # no prompt: the first token has no predecessor and is not scored
                index.append(offset + n_p - 1 if j == 0 else start + j - 1)
                labels.append(c[j])
                target.append(i * width + n_p + j)
            seg_ids += c
            seg_pos += list(range(n_p, n_p + len(c)))
        blocks.append(shared_prefix_mask(n_p, *(len(completions[i]) for i in group)))
        lengths.append(len(seg_ids))
        ids += seg_ids
        positions += seg_pos
        offset += len(seg_ids)
    mask = torch.zeros((1, 1, offset, offset), dtype=torch.bool)
    start = 0
    for block, n in zip(blocks, lengths):
        mask[0, 0, start : start + n, start : start + n] = block
        start += n
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "attention_mask": mask,
        "segment_lengths": torch.tensor(lengths, dtype=torch.long),
        "logp_index": torch.tensor(index, dtype=torch.long),
        "logp_labels": torch.tensor(labels, dtype=torch.long),
        "logp_target": torch.tensor(target, dtype=torch.long),
        "logical_tokens": torch.tensor(sum(len(p) + len(c) for p, c in zip(prompts, completions))),
    }


def collate_kto(items: list[KTOItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows ``0..B-1``: prompt + completion; rows ``B..2B-1``: prompt + mismatched completion. ``labels`` ``(B,)``."""
    prompts = [x.prompt_ids for x in items] * 2
    batch = pad_sequences(prompts, [x.completion_ids for x in items] + [x.kl_completion_ids for x in items], pad_id)
    batch["labels"] = torch.tensor([x.label for x in items])
    return batch


def mask_observations(completion_mask: torch.Tensor, samples: list[Sample]) -> None:
    """Zero ``completion_mask`` ``(B, T)`` (in place) at the observation tokens of multi-turn samples: the tokens an
    environment wrote are context, never trained on, never in the KL."""
    for i, s in enumerate(samples):
        if s.action_mask is not None:
            start = len(s.prompt_ids)
            completion_mask[i, start : start + len(s.action_mask)] = torch.tensor(s.action_mask)


def collate_samples(samples: list[Sample], pad_id: int, shared: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion rows ``(B, T)`` (``pad_sequences``) plus the per-token values of the
    samples placed at their completion positions (``old_logps``, ``ref_logps``, ``sampler_logps``, and for PPO
    ``values``/``returns``/``advantages``), and per-sequence ``advantages`` ``(B,)`` when they are scalars. With
    ``shared``, ``input_ids``/``attention_mask`` are instead the packed prefix-shared row of
    ``collate_groups_shared`` (plus its ``position_ids``, ``segment_lengths``, ``logp_*``, ``logical_tokens``)."""
    batch = pad_sequences([s.prompt_ids for s in samples], [s.completion_ids for s in samples], pad_id)
    mask_observations(batch["completion_mask"], samples)
    shape = batch["input_ids"].shape

    def per_token(name: str) -> torch.Tensor:
        out = torch.zeros(shape, dtype=torch.float32)
        for i, s in enumerate(samples):
            values = getattr(s, name) if name != "sampler_logps" else s.sampler_logps
            start = len(s.prompt_ids)
            out[i, start : start + len(values)] = torch.tensor(values, dtype=torch.float32)
        return out

    batch["sampler_logps"] = per_token("sampler_logps")
    for name in ("old_logps", "ref_logps", "values", "returns"):
        if samples and getattr(samples[0], name) is not None:
            batch[name] = per_token(name)
    if samples and len(samples[0].advantages) == 1:
        batch["advantages"] = torch.tensor([s.advantages[0] for s in samples], dtype=torch.float32)
    elif samples:
        batch["advantages"] = per_token("advantages")
    if shared:  # the forward runs on one packed row; the per-token values above keep the (B, W) layout
        packed = collate_groups_shared([s.prompt_ids for s in samples], [s.completion_ids for s in samples])
        batch["input_ids"], batch["attention_mask"] = packed.pop("input_ids"), packed.pop("attention_mask")
        batch.update(packed)
    return batch
