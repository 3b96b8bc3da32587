"""KTO on binary feedback (Ethayarajh et al. 2024): thumbs-up/down completions, no pairs needed.

Each item carries a mismatched completion for the KL reference point: the completion of the next item in
the data set, scored after this item's prompt (cut to fit max_length). Fixing the partner per item (rather
than per batch) keeps the reference log-probs precomputable and resume exact. z_ref is estimated per
micro-batch on these mismatched rows, without gradient (``alignkit.losses.kto_reference_point``).
"""

from __future__ import annotations

import torch

from alignkit.config import KTOConfig
from alignkit.data import KTOItem, collate_kto, to_binary, tokenize_kto
from alignkit.logprobs import CompletionScorer, sequence_logprobs
from alignkit.losses import kto_loss, kto_reference_point
from alignkit.train.distributed import all_reduce_sum
from alignkit.train.method import Method
from alignkit.train.reference import prepare_reference


class KTOMethod(Method):
    name = "kto"
    convert = staticmethod(to_binary)
    tokenize = staticmethod(tokenize_kto)

    def __init__(self, cfg: KTOConfig, pad_id: int):
        self.cfg, self.mc, self.pad_id = cfg, cfg.method, pad_id
        self.reference = None

    def wrap(self, model):
        return CompletionScorer(model, self.cfg.train.logprob_chunk_size)

    def setup(self, model, train_items, eval_items, accelerator):
        self._check_class_balance(train_items)
        self.reference, splits = prepare_reference(
            model,
            self.mc,
            self.cfg,
            accelerator,
            (train_items, eval_items),
            lambda xs: collate_kto(xs, self.pad_id),
            self.length,
            lambda x, v: KTOItem(**{**x.__dict__, "ref_logp": v[0], "ref_kl_logp": v[1]}),
            variant="kto",
            log=self.log,
        )
        return splits

    def _check_class_balance(self, items) -> None:
        """The paper (sec. 4.2) keeps lambda_D n_D / (lambda_U n_U) in [1, 4/3]; say so when it is not."""
        n_d = sum(x.label for x in items)
        n_u = len(items) - n_d
        if not n_d or not n_u:
            self.log(
                f"warning: KTO data has {n_d} desirable and {n_u} undesirable examples; with one class only, "
                "the loss can only push that class away from the reference point"
            )
            return
        ratio = self.mc.desirable_weight * n_d / (self.mc.undesirable_weight * n_u)
        if not 1.0 <= ratio <= 4 / 3:
            low, high = n_u / n_d * self.mc.undesirable_weight, 4 * n_u / (3 * n_d) * self.mc.undesirable_weight
            self.log(
                f"warning: {n_d} desirable vs {n_u} undesirable examples; lambda_D n_D / (lambda_U n_U) = "
                f"{ratio:.2f}, outside the [1, 4/3] the KTO paper recommends. Fix: set method.desirable_weight "
                f"between {low:.2f} and {high:.2f}"
            )

    def collate(self, items):
        batch = collate_kto(items, self.pad_id)
        if self.mc.reference == "precompute":
            batch["ref_logps"] = torch.tensor([x.ref_logp for x in items] + [x.ref_kl_logp for x in items])
        return batch

    def loss(self, module, batch):
        ref = batch["ref_logps"] if "ref_logps" in batch else self.reference.logps(batch)
        return kto_batch_loss(module, batch, ref, self.mc)

    def length(self, item) -> int:
        return len(item.prompt_ids) + max(len(item.completion_ids), len(item.kl_completion_ids))


def kto_batch_loss(module, batch: dict, ref_logps: torch.Tensor, mc):
    """KTO on a ``collate_kto`` batch: rows ``:B`` the labelled completions, ``B:`` the mismatched ones;
    ``ref_logps`` ``(2B,)`` the reference's sums of both; ``mc``: beta, desirable_weight, undesirable_weight ->
    (per-example losses ``(B,)``, metrics)."""
    labels = batch["labels"].bool()
    b = labels.shape[0]
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logps = sequence_logprobs(module(ids[:b], attn[:b], mask[:b]), mask[:b])  # (B,)
    with torch.no_grad():  # z_ref carries no gradient: score the mismatched rows without building a graph
        kl_logps = sequence_logprobs(module(ids[b:], attn[b:], mask[b:]), mask[b:])
    ref = ref_logps.to(logps.dtype)
    # training: z_ref over the global micro-batch (every process runs the same number of micro-steps);
    # evaluation shards may differ in batch count, so there each process keeps its own estimate
    z_ref = kto_reference_point(kl_logps, ref[b:], all_reduce_sum() if module.training else None)
    losses, rewards = kto_loss(logps, ref[:b], labels, z_ref, mc.beta, mc.desirable_weight, mc.undesirable_weight)
    metrics = {
        "rewards/desirable": rewards[labels],
        "rewards/undesirable": rewards[~labels],
        "logps/desirable": logps[labels].detach(),
        "logps/undesirable": logps[~labels].detach(),
        "kl": z_ref.expand(b),
        "rewards/accuracies": ((rewards > 0) == labels).float(),
    }
    return losses, metrics
