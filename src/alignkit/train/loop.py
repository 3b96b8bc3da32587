"""The one training loop every method shares (accelerate underneath).

Data order is a pure function of (seed, step): optimizer step s of epoch e takes a fixed slice of the
epoch's seeded permutation, split across processes and micro-batches. Resuming at step s therefore
continues exactly, and 1 process x grad_accum 2 sees the same global batches as 2 processes x 1.

Losses are per-example; the loop weights each by ``method.weight(item)`` and divides by the global batch's
total weight, so a step's gradient is the same however the batch is split (processes, micro-batches).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from alignkit.config import RunConfig, save_config
from alignkit.errors import TrainingDiverged, UserError
from alignkit.models.save import save_model
from alignkit.train.checkpoint import (
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.train.distributed import global_sum
from alignkit.train.early_stop import EarlyStopping
from alignkit.train.metrics import JsonlLog, MetricSums, peak_memory_mb


@dataclass
class TrainState:
    """What a checkpoint keeps of the loop (``state.json``); all but ``step`` are the ``EarlyStopping`` state."""

    step: int = 0
    best_metric: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    best_step: int | None = None


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    final_metrics: dict
    eval_metrics: dict
    wall_seconds: float
    peak_memory_mb: float
    stopped_early: bool = False
    history: list = field(default_factory=list)
    best_step: int | None = None  # the eval step with the best train.early_stopping_metric (when it is tracked)
    best_metric: float | None = None
    best_dir: Path | None = None  # output_dir/best with train.keep_best


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


def global_batch_indices(n: int, step: int, global_batch: int, seed: int, shuffle: bool = True) -> list[int]:
    """Example indices of optimizer step ``step``: a slice of epoch ``step // steps_per_epoch``'s permutation
    (the identity when ``shuffle`` is false)."""
    steps_per_epoch = n // global_batch
    epoch, offset = divmod(step, steps_per_epoch)
    if not shuffle:
        return list(range(offset * global_batch, (offset + 1) * global_batch))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return perm[offset * global_batch : (offset + 1) * global_batch]


def fit(
    method: Method,
    cfg: RunConfig,
    model: torch.nn.Module,
    tokenizer,
    train_items: list,
    eval_items: list,
    accelerator,
    resume: str | bool = False,
    callbacks: list[Callable] = (),
    log: Callable = print,
) -> TrainResult:
    """Train ``model`` with ``method`` on tokenized items; returns the result and writes everything to output_dir."""
    t0 = time.time()
    tc = cfg.train
    out = Path(tc.output_dir)
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = method.global_batch(tc, world)
    if len(train_items) < global_batch:
        raise UserError(
            f"{len(train_items)} training examples, fewer than one global batch of {global_batch} "
            f"(train.batch_size {tc.batch_size} x train.grad_accum {tc.grad_accum} x {world} processes). "
            "Fix: lower train.batch_size or train.grad_accum, or add data"
        )
    if not eval_items and (tc.early_stopping_patience or tc.eval_steps or tc.keep_best):
        field = (
            "train.early_stopping_patience"
            if tc.early_stopping_patience
            else "train.keep_best"
            if tc.keep_best
            else "train.eval_steps"
        )
        raise UserError(
            f"{field} is set but there is no eval data. Fix: set data.eval to a file or "
            "data.eval_fraction to hold out part of train, or unset " + field
        )
    steps_per_epoch = len(train_items) // global_batch
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
    optimizer_steps = total_steps * method.optimizer_steps_per_step()
    warmup = tc.warmup_steps or int(tc.warmup_ratio * optimizer_steps)
    if not method.online:
        log(
            f"global batch = {tc.batch_size} per device x {tc.grad_accum} accumulation x {world} process(es) = "
            f"{global_batch} examples/step; {total_steps} steps ({total_steps / steps_per_epoch:.2f} epochs of "
            f"{len(train_items)} examples), warmup {warmup}"
        )
    else:
        log(
            f"{global_batch} prompts/step; {total_steps} steps ({total_steps / steps_per_epoch:.2f} epochs of "
            f"{len(train_items)} prompts), {optimizer_steps} optimizer steps, warmup {warmup}"
        )

    if not resume:
        _claim_output_dir(out, tc.overwrite, accelerator)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    train_items, eval_items = method.setup(model, train_items, eval_items, accelerator)
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    wrapped = method.wrap(model)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    # fused: one kernel over all parameters (CPU and CUDA); the per-tensor loop costs ~0.3 s/step at 135M on CPU
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(
        params, lr=tc.learning_rate, betas=tuple(tc.adam_betas), weight_decay=tc.weight_decay, fused=fused or None
    )
    scheduler = get_scheduler(
        tc.lr_scheduler if tc.lr_scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=optimizer_steps,
    )
    module, optimizer = accelerator.prepare(wrapped, optimizer)
    module.train()

    state = TrainState()
    ckpt = find_resume_checkpoint(out, resume)
    expected = {"global_batch": global_batch, "num_train_examples": len(train_items), "seed": tc.seed}
    if ckpt is not None:
        saved = load_checkpoint(ckpt, wrapped, optimizer, scheduler, accelerator, expected)
        state = TrainState(**{k: saved[k] for k in TrainState.__dataclass_fields__ if k in saved})
        method.load_state_dict(saved.get("method_state", {}))
        log(f"resumed from {ckpt} at step {state.step}")
    # Early stopping and keep_best: one rule over the evaluations, its state in TrainState (so in checkpoints). On a
    # resume, best/ may hold a later eval than the checkpoint's best; the exact replay writes that eval again.
    keep_best = tc.keep_best if tc.keep_best is not None else tc.early_stopping_patience is not None
    best_dir = out / "best"
    stopper = None
    if tc.early_stopping_patience is not None or keep_best:
        stopper = EarlyStopping(
            tc.early_stopping_metric, tc.early_stopping_patience, tc.early_stopping_min_delta, tc.early_stopping_mode
        )
        stopper.load_state_dict(state.__dict__)
    jsonl = (
        JsonlLog(out / "metrics.jsonl", state.step if ckpt is not None else None)
        if accelerator.is_main_process
        else None
    )
    if tc.report_to:
        accelerator.init_trackers(out.name, config={"method": method.name, "learning_rate": tc.learning_rate})

    def record(metrics: dict) -> None:
        if jsonl is not None:
            jsonl.write(metrics)
        if tc.report_to:
            accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def save(step: int) -> None:
        save_checkpoint(
            out,
            step,
            wrapped,
            optimizer,
            scheduler,
            {**expected, **state.__dict__, "method": method.name, "method_state": method.state_dict()},
            accelerator,
            tc.keep_last,
        )

    def save_best(decision) -> None:
        """The weights of a new best eval -> ``output_dir/best`` (model/'s layout + best.json), atomically."""
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(module)
            info = {
                "step": decision.step,
                "metric": stopper.metric,
                "value": decision.value,
                "mode": "max" if stopper.maximize else "min",
            }
            files = {**method.best_files(unwrapped, last_eval), "best.json": json.dumps(info, indent=1) + "\n"}
            save_model(unwrapped.model, tokenizer, best_dir, files)
        accelerator.wait_for_everyone()
        log(f"step {decision.step}: new best {stopper.metric} {decision.value:.4g}; weights saved to {best_dir}")

    history, window, last_eval = [], MetricSums(), {}
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc=f"{method.name}",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )

    def optimizer_step(items: list, sums: MetricSums) -> float | None:
        """One optimizer step on this process's ``items`` (micro-batches of train.batch_size); the loss of each
        example is weighted and divided by the total weight over all processes. Returns the gradient norm, or
        None when every example has weight 0 (nothing to learn from: no step)."""
        total_weight = global_sum(sum(method.weight(x) for x in items), accelerator)
        if total_weight == 0:
            return None
        n_micro = max(1, math.ceil(len(items) / tc.batch_size))
        for micro in range(n_micro):
            chunk = items[micro * tc.batch_size : (micro + 1) * tc.batch_size]
            batch = {k: v.to(accelerator.device) for k, v in method.collate(chunk).items()}
            weights = torch.tensor([method.weight(x) for x in chunk], device=accelerator.device)
            sync = nullcontext() if micro == n_micro - 1 else accelerator.no_sync(module)
            with sync, accelerator.autocast():
                losses, metrics = method.loss(module, batch)
                loss = (losses * weights).sum() / total_weight
                accelerator.backward(loss * world)  # DDP averages gradients over processes
            sums.add_scalar("loss", float((losses.detach().float() * weights).sum()) / total_weight, 0.0)
            sums.add(metrics)
            sums.add_scalar("tokens", float(method.tokens(batch)), 0.0)
        sums.add_scalar("loss", 0.0, 1.0 / world)  # reduced: the global weighted mean, averaged over steps
        if tc.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
        else:
            norms = [p.grad.norm() for p in params if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        if not math.isfinite(grad_norm):  # the same on every process: gradients are all-reduced
            _diverged(state.step + 1, float("nan"), grad_norm, out, items)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    while state.step < total_steps and not state.stopped_early:
        step_t0 = time.time()
        indices = global_batch_indices(len(train_items), state.step, global_batch, tc.seed, tc.shuffle)
        mine = [train_items[i] for i in indices][rank::world]
        sums, grad_norms = MetricSums(), []
        for update in method.updates(module, mine, state.step, sums):
            grad_norm = optimizer_step(update, sums)
            if grad_norm is not None:
                grad_norms.append(grad_norm)
        sums.add_scalar("tokens", 0.0, 1.0 / world)  # reduced: total tokens over all processes
        step_metrics = sums.reduce(accelerator)
        if grad_norms and not math.isfinite(step_metrics["loss"]):
            _diverged(state.step + 1, step_metrics["loss"], float("nan"), out, mine)
        state.step += 1
        seconds = time.time() - step_t0
        step_metrics.update(
            grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
            learning_rate=scheduler.get_last_lr()[0],
            tokens_per_second=step_metrics.pop("tokens") / seconds,
            seconds_per_step=seconds,
        )
        step_metrics.update(method.end_step(step_metrics))
        for k, v in step_metrics.items():
            if not math.isnan(v):  # a metric over a subset (e.g. KTO's desirable rows) may be empty in a step
                window.add_scalar(k, v)
        bar.update(1)
        bar.set_postfix(
            {
                k: f"{step_metrics[k]:.3g}"
                for k in ("loss", "rewards/accuracies", "rewards/margins", "reward/mean", "kl/sequence")
                if k in step_metrics
            }
        )

        if state.step % tc.logging_steps == 0 or state.step == total_steps:
            logged = {
                "step": state.step,
                "epoch": round(state.step / steps_per_epoch, 4),
                **method.summarize({k: window.sums[k] / window.counts[k] for k in window.sums}),
            }
            window = MetricSums()
            history.append(logged)
            record(logged)
        if eval_items and ((tc.eval_steps and state.step % tc.eval_steps == 0) or state.step == total_steps):
            last_eval = evaluate(method, module, eval_items, tc.eval_batch_size, accelerator)
            record({"step": state.step, **last_eval})
            history.append({"step": state.step, **last_eval})
            bar.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
            if stopper is not None:
                decision = stopper.update(state.step, stopper.value_of(last_eval))
                for k, v in stopper.state_dict().items():
                    setattr(state, k, v)
                if decision.improved and keep_best:
                    save_best(decision)
                if decision.stop:
                    log(stopper.message(state.step))
        if tc.save_steps and state.step % tc.save_steps == 0 and state.step < total_steps:
            save(state.step)
        for callback in callbacks:
            callback(state, step_metrics)
    bar.close()

    model_dir = out / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(module)
        extra = method.finish(unwrapped, train_items, eval_items, last_eval)
        save_model(unwrapped.model, tokenizer, model_dir, extra)
    if tc.save_steps:
        save(state.step)
    if tc.report_to:
        accelerator.end_training()
    train_logs = [h for h in history if "loss" in h]
    result = TrainResult(
        out,
        model_dir,
        state.step,
        train_logs[-1] if train_logs else {},
        last_eval,
        time.time() - t0,
        peak_memory_mb(accelerator.device),
        state.stopped_early,
        history,
        state.best_step,
        state.best_metric,
        best_dir if keep_best and state.best_step is not None else None,
    )
    log(
        f"done: {state.step} steps in {result.wall_seconds:.1f}s, peak memory {result.peak_memory_mb:.0f} MB; "
        f"model saved to {model_dir}"
    )
    if state.best_step is not None:
        where = f"; its weights are in {best_dir}" if result.best_dir else ""
        log(
            f"best eval: step {state.best_step}, {tc.early_stopping_metric} {state.best_metric:.4g}{where} "
            f"({model_dir.name}/ holds the last step, {state.step})"
        )
    return result


def _claim_output_dir(out: Path, overwrite: bool, accelerator) -> None:
    """Refuse to start a fresh run over an earlier one unless asked; with overwrite, drop its checkpoints."""
    earlier = list_checkpoints(out) + [p for p in (out / "model", out / "best", out / "metrics.jsonl") if p.exists()]
    if not earlier:
        return
    if not overwrite:
        raise UserError(
            f"{out} already holds a run ({', '.join(p.name for p in earlier[:3])}). Fix: add --resume to "
            "continue it, choose another train.output_dir, or set train.overwrite=true to start afresh"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for ckpt in list_checkpoints(out):
            shutil.rmtree(ckpt)
        shutil.rmtree(out / "best", ignore_errors=True)  # an earlier run's best weights are not this run's
    accelerator.wait_for_everyone()


def evaluate(method: Method, module, items: list, batch_size: int, accelerator) -> dict[str, float]:
    """``method.evaluate`` on ``items`` in eval mode; metric names get the ``eval/`` prefix."""
    was_training = module.training
    module.eval()
    try:
        metrics = method.evaluate(module, items, batch_size, accelerator)
    finally:
        module.train(was_training)
    return {f"eval/{k}": v for k, v in metrics.items()}


def _diverged(step: int, loss: float, grad_norm: float, out: Path, items: list) -> None:
    last = sorted(out.glob("ckpt-*"))
    raise TrainingDiverged(
        f"step {step}: loss is {loss}, gradient norm {grad_norm}. Training stopped; "
        f"{'the last checkpoint ' + str(last[-1]) + ' is intact' if last else 'no checkpoint was written'}. "
        f"Batch examples: {', '.join(getattr(x, 'source', '?') for x in items[:4])}. Fix: lower "
        "train.learning_rate, use model.dtype=fp32, or check these records"
    )
