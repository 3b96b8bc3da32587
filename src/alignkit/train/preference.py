"""The DPO family on pairwise preferences: one method, the loss picked from ``alignkit.losses.LOSSES``.

Reference log-probs come from the initial policy (or ``method.ref_model``): precomputed once before
training (default; no reference model is held), or computed live each step (a frozen copy for full
fine-tuning; the same weights with the LoRA adapter disabled under LoRA). Reference-free losses
(SimPO, ORPO) skip the reference entirely.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate.utils import gather_object

from alignkit.config import PreferenceConfig
from alignkit.data import TokenizedPair, collate_pairs, to_pairwise, tokenize_pairs
from alignkit.logprobs import CompletionScorer, sequence_logprobs, token_logprobs
from alignkit.losses import LOSSES, sft_loss
from alignkit.models import load_model
from alignkit.train.loop import Method


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
        self.live_ref = None  # (model, uses_adapter_disable) for live reference

    def wrap(self, model):
        return CompletionScorer(model, self.cfg.train.logprob_chunk_size)

    def setup(self, model, train_items, eval_items, accelerator):
        if not self.spec.needs_reference:
            return train_items, eval_items
        ref, disable_adapter = self._reference(model, accelerator)
        if self.mc.reference == "live":
            self.live_ref = (ref, disable_adapter)
            return train_items, eval_items
        scored = [self._precompute(items, ref, disable_adapter, accelerator) for items in (train_items, eval_items)]
        return scored[0], scored[1]

    def _reference(self, model, accelerator):
        if self.mc.ref_model:
            ref = load_model(self.mc.ref_model, torch.float32, accelerator.device, self.cfg.model.trust_remote_code)
            return ref.requires_grad_(False), False
        if hasattr(model, "disable_adapter"):  # LoRA: the same weights with the adapter off, no second copy
            return model, True
        if self.mc.reference == "live":
            return copy.deepcopy(model).requires_grad_(False).eval().to(accelerator.device), False
        return model, False  # precompute with the initial policy itself

    @torch.no_grad()
    def reference_logps(self, ref, disable_adapter: bool, batch: dict) -> torch.Tensor:
        """Summed reference log-probs ``(2B,)`` of a collated batch."""
        was_training = ref.training
        ref.eval()
        with ref.disable_adapter() if disable_adapter else nullcontext():
            logps = token_logprobs(
                ref,
                batch["input_ids"],
                batch["attention_mask"],
                batch["completion_mask"],
                chunk_size=self.cfg.train.logprob_chunk_size,
            ).sum(-1)
        ref.train(was_training)
        return logps

    def _precompute(self, items, ref, disable_adapter, accelerator):
        bs = self.cfg.train.eval_batch_size
        mine = sorted(
            range(accelerator.process_index, len(items), accelerator.num_processes), key=lambda i: self.length(items[i])
        )  # similar lengths together: less padding
        results = []
        for s in range(0, len(mine), bs):
            idx = mine[s : s + bs]
            batch = {
                k: v.to(accelerator.device) for k, v in collate_pairs([items[i] for i in idx], self.pad_id).items()
            }
            with accelerator.autocast():
                logps = self.reference_logps(ref, disable_adapter, batch).tolist()
            results += [(i, logps[j], logps[len(idx) + j]) for j, i in enumerate(idx)]
        if accelerator.num_processes > 1:
            results = gather_object(results)
        out = list(items)
        for i, chosen, rejected in results:
            out[i] = ScoredPair(**{**items[i].__dict__, "ref_chosen": chosen, "ref_rejected": rejected})
        return out

    def collate(self, items):
        batch = collate_pairs(items, self.pad_id)
        if self.spec.needs_reference and self.live_ref is None:
            batch["ref_logps"] = torch.tensor([x.ref_chosen for x in items] + [x.ref_rejected for x in items])
        return batch

    def loss(self, module, batch):
        mask = batch["completion_mask"]
        token_logps = module(batch["input_ids"], batch["attention_mask"], mask)  # (2B, seq)
        sums = sequence_logprobs(token_logps, mask)  # (2B,)
        n_tokens = mask[:, 1:].sum(-1).clamp(min=1)
        means = sums / n_tokens
        b = sums.shape[0] // 2
        policy = means if self.spec.average_logps else sums
        metrics = {"logps/chosen": sums[:b].detach(), "logps/rejected": sums[b:].detach()}
        if self.spec.needs_reference:
            if self.live_ref is not None:
                ref_sums = self.reference_logps(*self.live_ref, batch)
            else:
                ref_sums = batch["ref_logps"].to(sums.dtype)
            ref = ref_sums / n_tokens if self.spec.average_logps else ref_sums
            losses, chosen_r, rejected_r = self.spec.fn(policy[:b], policy[b:], ref[:b], ref[b:], **self.params)
            metrics["kl/chosen"] = (sums[:b] - ref_sums[:b]).detach()
        else:
            losses, chosen_r, rejected_r = self.spec.fn(policy[:b], policy[b:], **self.params)
        nll = sft_loss(means[:b])
        if self.sft_weight:
            losses = losses + self.sft_weight * nll
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

    def length(self, item) -> int:
        return len(item.prompt_ids) + max(len(item.chosen_ids), len(item.rejected_ids))
