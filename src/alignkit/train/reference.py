"""Reference log-probs for methods that regularize toward a reference policy (DPO family, KTO).

The reference is the initial policy (under LoRA: the same weights with the adapter disabled, no second copy),
a frozen copy of it (full fine-tuning with live reference), or another model (``ref_model``). Its summed
completion log-probs are either precomputed once for every item before training, or computed live per batch.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import gather_object

from alignkit.logprobs import segment_logprobs, token_logprobs
from alignkit.models import load_model
from alignkit.models.embedded import cache_root
from alignkit.models.load import resolve_model_path


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
            if "logp_index" in batch:  # prefix-shared pairs (collate_pairs_shared)
                logps = segment_logprobs(self.model, batch, self.chunk_size)
            else:
                logps = token_logprobs(
                    self.model,
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["completion_mask"],
                    chunk_size=self.chunk_size,
                ).sum(-1)
        self.model.train(was_training)
        return logps

    @torch.no_grad()
    def token_logps(self, batch: dict, temperature: float = 1.0) -> torch.Tensor:
        """Per-token reference log-probs ``(rows, seq)`` of a right-padded batch (``pad_sequences``), under
        ``softmax(logits / temperature)``."""
        was_training = self.model.training
        self.model.eval()
        with self.model.disable_adapter() if self.disable_adapter else nullcontext():
            logps = token_logprobs(
                self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                chunk_size=self.chunk_size, temperature=temperature,
            )  # fmt: skip
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
    model,
    method_cfg,
    cfg,
    accelerator,
    splits: tuple[list, ...],
    collate: Callable,
    length: Callable,
    attach: Callable,
    variant: str = "",
    log: Callable = print,
) -> tuple[Reference, tuple[list, ...]]:
    """The reference for ``method_cfg.reference`` / ``ref_model``, and ``splits`` with values attached.

    With ``precompute``, every item of every split is replaced by ``attach(item, row_values)``; with ``live``,
    the splits come back unchanged and the method calls ``Reference.logps`` per batch. Precomputed values are
    cached on disk (``method.reference_cache``) under a key of the reference model's files, the token ids of
    every item, the precision, device type and ``variant`` (the batch layout), so a rerun skips the forward.
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
    path = None
    if getattr(method_cfg, "reference_cache", False):
        key = cache_key(method_cfg.ref_model or cfg.model.name, splits, accelerator, variant)
        path = cache_root() / "reference" / f"{key}.pt"
    if path is not None and path.is_file():
        per_split = torch.load(path, weights_only=True)
        log(f"reference log-probs: reused from the cache {path}")
    else:
        t0 = time.time()
        per_split = []
        for items in splits:
            values = ref.precompute(items, collate, length, cfg.train.eval_batch_size, accelerator)
            per_split.append([values[i] for i in range(len(items))])
        log(f"reference log-probs: computed for {sum(map(len, splits))} examples in {time.time() - t0:.1f}s")
        if path is not None and accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(per_split, tmp)
            os.replace(tmp, path)
    scored = tuple([attach(x, v) for x, v in zip(items, values)] for items, values in zip(splits, per_split))
    return ref, scored


def cache_key(model_name: str | None, splits: tuple[list, ...], accelerator, variant: str) -> str:
    """sha256 of what the reference values depend on: the model's files (name, size, mtime), every item's
    token ids, the precision and device type, and the batch layout."""
    path = Path(resolve_model_path(model_name))
    files = (
        sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
        if path.is_dir()
        else str(model_name)
    )
    h = hashlib.sha256()
    h.update(repr((1, str(path), files, accelerator.mixed_precision, accelerator.device.type, variant)).encode())
    for items in splits:
        h.update(b"|split|")
        for x in items:
            h.update(repr([v for _, v in sorted(vars(x).items()) if isinstance(v, list)]).encode())
    return h.hexdigest()[:32]
