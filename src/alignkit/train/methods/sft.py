"""Supervised fine-tuning: NLL of completion tokens only, averaged over all completion tokens of a step."""

from __future__ import annotations

from alignkit.config import SFTConfig
from alignkit.data import collate_completions, to_sft, tokenize_completions
from alignkit.logprobs import CompletionScorer, sequence_logprobs
from alignkit.losses import sft_loss
from alignkit.train.method import Method


class SFTMethod(Method):
    name = "sft"
    convert = staticmethod(to_sft)
    tokenize = staticmethod(tokenize_completions)

    def __init__(self, cfg: SFTConfig, pad_id: int):
        self.cfg, self.pad_id = cfg, pad_id

    def wrap(self, model):
        return CompletionScorer(model, self.cfg.train.logprob_chunk_size)

    def collate(self, items):
        return collate_completions(items, self.pad_id)

    def weight(self, item) -> float:
        """Token-level mean: each example counts as many times as it has completion tokens."""
        return float(len(item.completion_ids) - (0 if item.prompt_ids else 1))  # token 0 is never scored

    def loss(self, module, batch):
        mask = batch["completion_mask"]
        logps = sequence_logprobs(module(batch["input_ids"], batch["attention_mask"], mask), mask, average=True)
        losses = sft_loss(logps)
        return losses, {"nll": losses.detach(), "completion_tokens": mask.sum(-1).float()}

    def length(self, item) -> int:
        return len(item.prompt_ids) + len(item.completion_ids)
