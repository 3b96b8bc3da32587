"""What a training method adds to the one loop (``train.loop.fit``): its batches, its loss, and optional setup.

A method is small: ``wrap`` (the module accelerate prepares), ``collate`` and ``loss`` (per-example losses and
metrics), and optionally ``setup``, ``weight``, ``summarize``, ``finish``. Online methods (``train.online``) also
define ``updates``: the rollout stage that turns a step's prompts into scored samples before the optimizer steps.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from alignkit.config import RunConfig
from alignkit.train.metrics import MetricSums


class Method:
    """What a training method adds to the loop: batches, a loss, and optional setup.

    ``loss(module, batch)`` returns per-example losses ``(b,)`` and per-example metrics ``{name: (b,)}``.
    ``module`` is whatever ``wrap(model)`` returned, after accelerate prepared it.
    """

    name = "method"
    online = False  # online methods sample their training data in the loop (train/rollout.py)
    log: Callable = staticmethod(print)  # set by prepare() to the run's logger

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def setup(self, model, train_items: list, eval_items: list, accelerator) -> tuple[list, list]:
        return train_items, eval_items

    def collate(self, items: list) -> dict:
        raise NotImplementedError

    def weight(self, item) -> float:
        return 1.0

    def loss(self, module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def length(self, item) -> int:
        """Padded length of an item's longest row; forward-only passes batch items of similar length together."""
        return 0

    def load_model(self, cfg: RunConfig, tokenizer):
        """The trainable model (fp32 master weights): the policy, with LoRA if configured."""
        from alignkit.models import load_policy

        return load_policy(cfg.model, cfg.lora, device="cpu", tokenizer=tokenizer)[0]

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Turn averaged metrics into reported ones (e.g. per-bin calibration terms into an ECE)."""
        return metrics

    def global_batch(self, tc, world: int) -> int:
        """Items (examples, or prompts for online methods) one step takes over all processes."""
        return tc.batch_size * tc.grad_accum * world

    def optimizer_steps_per_step(self) -> int:
        """Optimizer steps one loop step takes (online methods: passes x minibatches over a rollout)."""
        return 1

    def updates(self, module, items: list, step: int, sums: MetricSums) -> Iterator[list]:
        """This process's items of a step -> the item lists of its optimizer steps (one each). Offline methods
        train on the items themselves; online methods first turn prompts into scored samples (the rollout),
        adding its metrics to ``sums``."""
        yield items

    def end_step(self, metrics: dict[str, float]) -> dict[str, float]:
        """After a step, on every process, with its reduced metrics: update controllers; returns extra metrics."""
        return {}

    def state_dict(self) -> dict:
        """Method state a checkpoint keeps (JSON-serializable), e.g. an adaptive KL coefficient."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @torch.no_grad()
    def evaluate(self, module, items: list, batch_size: int, accelerator) -> dict[str, float]:
        """Mean of every metric (and the weighted loss) over ``items``, computed in shards across processes."""
        sums = MetricSums()
        mine = sorted(items[accelerator.process_index :: accelerator.num_processes], key=self.length)  # less padding
        for s in range(0, len(mine), batch_size):
            chunk = mine[s : s + batch_size]
            batch = {k: v.to(accelerator.device) for k, v in self.collate(chunk).items()}
            weights = torch.tensor([self.weight(x) for x in chunk], device=accelerator.device)
            with accelerator.autocast():
                losses, metrics = self.loss(module, batch)
            sums.add_scalar("loss", float((losses.float() * weights).sum()), float(weights.sum()))
            sums.add(metrics)
        return self.summarize(sums.reduce(accelerator))

    def finish(self, module, train_items: list, eval_items: list, eval_metrics: dict) -> dict[str, str]:
        """After training, on the main process: extra files ``{name: text}`` saved with the model."""
        return {}

    def best_files(self, module, eval_metrics: dict) -> dict[str, str]:
        """On the main process, at a new best eval (``train.keep_best``): extra files ``{name: text}`` saved with
        the weights in ``output_dir/best``. ``finish`` may end things (close workers), so it is not called there."""
        return {}
