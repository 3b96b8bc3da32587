"""The DPO family on pairwise preferences: one method, the loss picked from ``alignkit.losses.LOSSES``.

Reference log-probs come from the initial policy (or ``method.ref_model``): precomputed once before
training (default; no reference model is held), or computed live each step (a frozen copy for full
fine-tuning; the same weights with the LoRA adapter disabled under LoRA). Reference-free losses
(SimPO, ORPO) skip the reference entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.config import PreferenceConfig
from alignkit.data import TokenizedPair, collate_pairs, to_pairwise, tokenize_pairs
from alignkit.data.collate import collate_pairs_shared
from alignkit.logprobs import (
    CompletionScorer,
    layouts_agree,
    segment_logprobs,
    sequence_logprobs,
    shared_inputs,
    supports_prefix_sharing,
)
from alignkit.losses import LOSSES, sft_loss
from alignkit.models.attention import use_segmented_attention
from alignkit.train.method import Method
from alignkit.train.reference import prepare_reference


@dataclass(frozen=True)
class ScoredPair(TokenizedPair):
    """A pair with its reference summed log-probs attached (precomputed reference)."""

    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


class PreferenceMethod(Method):
    convert = staticmethod(to_pairwise)
    tokenize = staticmethod(tokenize_pairs)

    def __init__(self, cfg: PreferenceConfig, pad_id: int):
        self.cfg, self.pad_id = cfg, pad_id
        self.mc = cfg.method
        self.name = self.mc.loss
        self.spec = LOSSES[self.mc.loss]
        self.params = {
            "beta": self.mc.resolved_beta,
            "label_smoothing": self.mc.label_smoothing,
            "gamma": self.mc.gamma,
        }
        self.params = {k: v for k, v in self.params.items() if k in self.spec.params}
        self.sft_weight = self.mc.resolved_sft_weight
        self.reference = None  # set up before training when the loss needs one
        self.shared = False  # prefix sharing, decided in setup() for the model at hand

    def wrap(self, model):
        return CompletionScorer(model, self.cfg.train.logprob_chunk_size)

    def setup(self, model, train_items, eval_items, accelerator):
        tc = self.cfg.train
        self.packed = tc.prefix_sharing and tc.packing and use_segmented_attention(model)
        self.shared = tc.prefix_sharing and _prefix_sharing_works(
            model, train_items, self.pad_id, self.packed, self.log
        )
        self.log(f"batch layout: {layout_name(self.shared, self.packed)}")
        if not self.spec.needs_reference:
            return train_items, eval_items
        self.reference, splits = prepare_reference(
            model,
            self.mc,
            self.cfg,
            accelerator,
            (train_items, eval_items),
            self._collate_rows,
            self.length,
            lambda x, v: ScoredPair(**{**x.__dict__, "ref_chosen": v[0], "ref_rejected": v[1]}),
            variant=f"pairs shared={self.shared}",  # packing changes no value, only speed
            log=self.log,
        )
        return splits

    def _collate_rows(self, items):
        if self.shared:
            return collate_pairs_shared(items, self.pad_id, packed=self.packed)
        return collate_pairs(items, self.pad_id)

    def collate(self, items):
        batch = self._collate_rows(items)
        if self.spec.needs_reference and self.mc.reference == "precompute":
            batch["ref_logps"] = torch.tensor([x.ref_chosen for x in items] + [x.ref_rejected for x in items])
        return batch

    def loss(self, module, batch):
        if "logp_index" in batch:  # prefix-shared: one row per pair
            sums = module(batch["input_ids"], batch["attention_mask"], shared=shared_inputs(batch))  # (2B,)
            n_tokens = batch["completion_tokens"].clamp(min=1)
        else:
            mask = batch["completion_mask"]
            token_logps = module(batch["input_ids"], batch["attention_mask"], mask)  # (2B, seq)
            sums = sequence_logprobs(token_logps, mask)  # (2B,)
            n_tokens = mask[:, 1:].sum(-1).clamp(min=1)
        ref_sums = None
        if self.spec.needs_reference:
            ref_sums = self.reference.logps(batch) if self.mc.reference == "live" else batch["ref_logps"].to(sums.dtype)
        return pair_loss(self.spec, self.params, self.sft_weight, sums, n_tokens, ref_sums)

    def tokens(self, batch: dict) -> int:
        """Non-padding tokens of the chosen and rejected sequences (the prompt counted for both), either layout."""
        if "logical_tokens" in batch:
            return int(batch["logical_tokens"])
        return int(batch["attention_mask"].sum())

    def length(self, item) -> int:
        if self.shared:
            return len(item.prompt_ids) + len(item.chosen_ids) + len(item.rejected_ids)
        return len(item.prompt_ids) + max(len(item.chosen_ids), len(item.rejected_ids))


def pair_loss(spec, params: dict, sft_weight: float, sums, n_tokens, ref_sums=None):
    """The DPO-family loss of a batch of pairs, chosen rows first: ``sums``/``n_tokens``/``ref_sums`` ``(2B,)``
    (summed completion log-probs of the policy, completion token counts, the reference's sums or None for a
    reference-free loss) -> (per-pair losses ``(B,)``, per-pair metrics ``{name: (B,)}``)."""
    means = sums / n_tokens
    b = sums.shape[0] // 2
    policy = means if spec.average_logps else sums
    metrics = {"logps/chosen": sums[:b].detach(), "logps/rejected": sums[b:].detach()}
    if spec.needs_reference:
        ref = ref_sums / n_tokens if spec.average_logps else ref_sums
        losses, chosen_r, rejected_r = spec.fn(policy[:b], policy[b:], ref[:b], ref[b:], **params)
        metrics["kl/chosen"] = (sums[:b] - ref_sums[:b]).detach()
    else:
        losses, chosen_r, rejected_r = spec.fn(policy[:b], policy[b:], **params)
    nll = sft_loss(means[:b])
    if sft_weight:
        losses = losses + sft_weight * nll
    metrics.update(
        {
            "rewards/chosen": chosen_r,
            "rewards/rejected": rejected_r,
            "rewards/margins": chosen_r - rejected_r,
            "rewards/accuracies": (chosen_r > rejected_r).float(),
            "nll/chosen": nll.detach(),
        }
    )
    return losses, metrics


def layout_name(shared: bool, packed: bool) -> str:
    if not shared:
        return "two rows per pair (prompt+chosen, prompt+rejected), padded"
    if packed:
        return "prefix sharing, all pairs packed in one row (attention per pair, no padding)"
    return "prefix sharing, one padded row per pair (prompt+chosen+rejected)"


def _prefix_sharing_works(model, items: list, pad_id: int, packed: bool, log) -> bool:
    """Prefix sharing needs the fused head and a 4D-mask attention; the probe on two training pairs confirms the
    shared layout (``packed`` or not) gives the log-probs of the plain one (else plain is used)."""
    if not supports_prefix_sharing(model):
        log("prefix sharing off: this model needs the plain layout (logit transform or attention without 4D masks)")
        return False
    device = next(model.parameters()).device
    plain = {k: v.to(device) for k, v in collate_pairs(items[:2], pad_id).items()}
    shared = {k: v.to(device) for k, v in collate_pairs_shared(items[:2], pad_id, packed=packed).items()}

    def plain_logps():
        mask = plain["completion_mask"]
        return sequence_logprobs(CompletionScorer(model)(plain["input_ids"], plain["attention_mask"], mask), mask)

    return layouts_agree(model, plain_logps, lambda: segment_logprobs(model, shared), "log-probs", log)
