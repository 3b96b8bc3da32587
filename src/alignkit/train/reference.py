"""Reference log-probs for methods that regularize toward a reference policy (DPO family, KTO).

The reference is the initial policy (under LoRA: the same weights with the adapter disabled, no second copy),
a frozen copy of it (full fine-tuning with live reference), or another model (``ref_model``). Its summed
completion log-probs are either precomputed once for every item before training, or computed live per batch.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable

import torch
from accelerate.utils import gather_object

from alignkit.logprobs import token_logprobs
from alignkit.models import load_model


class Reference:
    def __init__(
        self,
        model,
        mode: str,
        ref_model: str | None,
        accelerator,
        trust_remote_code: bool = False,
        chunk_size: int = 1024,
    ):
        """``mode``: precompute | live. ``model`` is the policy before training."""
        self.disable_adapter = False
        self.chunk_size = chunk_size
        if ref_model:
            self.model = load_model(ref_model, torch.float32, accelerator.device, trust_remote_code).requires_grad_(
                False
            )
        elif hasattr(model, "disable_adapter"):
            self.model, self.disable_adapter = model, True
        elif mode == "live":
            self.model = copy.deepcopy(model).requires_grad_(False).eval().to(accelerator.device)
        else:
            self.model = model  # precomputed before any update: the initial policy itself

    @torch.no_grad()
    def logps(self, batch: dict) -> torch.Tensor:
        """Summed reference log-probs of every row of a collated batch: ``(rows,)``."""
        was_training = self.model.training
        self.model.eval()
        with self.model.disable_adapter() if self.disable_adapter else nullcontext():
            logps = token_logprobs(
                self.model,
                batch["input_ids"],
                batch["attention_mask"],
                batch["completion_mask"],
                chunk_size=self.chunk_size,
            ).sum(-1)
        self.model.train(was_training)
        return logps

    def precompute(
        self, items: list, collate: Callable, length: Callable, batch_size: int, accelerator
    ) -> dict[int, list[float]]:
        """Reference log-probs of every item: ``{index: [row values]}``.

        ``collate(items)`` must lay rows out in blocks (row k of item j at ``k * len(items) + j``), as the pair
        collator does. Items are sharded across processes and batched by length (less padding).
        """
        mine = sorted(
            range(accelerator.process_index, len(items), accelerator.num_processes), key=lambda i: length(items[i])
        )
        results = []
        for s in range(0, len(mine), batch_size):
            idx = mine[s : s + batch_size]
            batch = {k: v.to(accelerator.device) for k, v in collate([items[i] for i in idx]).items()}
            with accelerator.autocast():
                logps = self.logps(batch).tolist()
            results += [(i, logps[j :: len(idx)]) for j, i in enumerate(idx)]
        if accelerator.num_processes > 1:
            results = gather_object(results)
        return dict(results)


def prepare_reference(
    model, method_cfg, cfg, accelerator, splits: tuple[list, ...], collate: Callable, length: Callable, attach: Callable
) -> tuple[Reference, tuple[list, ...]]:
    """The reference for ``method_cfg.reference`` / ``ref_model``, and ``splits`` with values attached.

    With ``precompute``, every item of every split is replaced by ``attach(item, row_values)``; with ``live``,
    the splits come back unchanged and the method calls ``Reference.logps`` per batch.
    """
    ref = Reference(
        model,
        method_cfg.reference,
        method_cfg.ref_model,
        accelerator,
        cfg.model.trust_remote_code,
        cfg.train.logprob_chunk_size,
    )
    if method_cfg.reference == "live":
        return ref, splits
    scored = []
    for items in splits:
        values = ref.precompute(items, collate, length, cfg.train.eval_batch_size, accelerator)
        scored.append([attach(x, values[i]) for i, x in enumerate(items)])
    return ref, tuple(scored)
