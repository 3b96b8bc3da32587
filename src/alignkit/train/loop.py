"""The one training loop every method shares (accelerate underneath).

    fit: plan (global batch, steps, warmup) -> start (output dir, method setup, optimizer, resume) ->
         every step: train_step (the step's items -> the method's updates -> optimizer steps) -> log_step ->
         evaluate_if_due (eval, early stopping, best weights) -> checkpoint_if_due -> callbacks
         -> finish (final model, last checkpoint, result)

Data order is a pure function of (seed, step): optimizer step s of epoch e takes a fixed slice of the
epoch's seeded permutation, split across processes and micro-batches. Resuming at step s therefore
continues exactly, and 1 process x grad_accum 2 sees the same global batches as 2 processes x 1.

Losses are per-example; the loop weights each by ``method.weight(item)`` and divides by the global batch's
total weight, so a step's gradient is the same however the batch is split (processes, micro-batches).
"""

from __future__ import annotations

import gc
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from alignkit.config import RunConfig, save_config, to_dict
from alignkit.errors import UserError
from alignkit.models.cpu_memory import freed_memory_given_back, give_back_freed_memory, keep_freed_memory
from alignkit.models.save import save_model
from alignkit.train.checkpoint import (
    claim_output_dir,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.train.distributed import global_sum
from alignkit.train.early_stop import EarlyStopping
from alignkit.train.method import Method
from alignkit.train.metrics import JsonlLog, MetricSums, peak_memory_mb
from alignkit.train.steps import diverged, global_batch_indices, make_optimizer

PROGRESS_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "reward/mean", "kl/sequence")


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
    """Train ``model`` with ``method`` on tokenized items; returns the result and writes everything to output_dir.
    On CPU with ``train.reuse_cpu_memory`` the loop keeps freed memory in the process (``models.cpu_memory``). When
    it ends, the run's optimizer state is released (accelerate's references included) and, on CPU, freed memory
    goes back to the OS: what runs next (evaluation) starts from the model alone."""
    if accelerator.device.type == "cpu" and cfg.train.reuse_cpu_memory:
        keep_freed_memory()
    run = None
    try:
        run = _Run(method, cfg, model, tokenizer, accelerator, log)
        run.plan(train_items, eval_items)
        train_items, eval_items = run.start(train_items, eval_items, resume)
        while run.state.step < run.total_steps and not run.state.stopped_early:
            metrics = run.train_step(train_items)
            run.log_step(metrics)
            run.evaluate_if_due(eval_items)
            run.checkpoint_if_due()
            for callback in callbacks:
                callback(run.state, metrics)
        return run.finish(train_items, eval_items)
    finally:
        run = None  # its batches, optimizer state and buffers
        accelerator.free_memory()  # accelerate holds what it prepared (the optimizer and its state) until told
        if accelerator.device.type == "cpu":  # what the steps freed goes back to the OS (glibc's defaults again)
            gc.collect()
            give_back_freed_memory()


class _Run:
    """One call of ``fit``: its plan, its optimizer and state, and the steps ``fit`` takes in order."""

    def __init__(self, method: Method, cfg: RunConfig, model, tokenizer, accelerator, log: Callable):
        self.method, self.cfg, self.tc, self.model, self.tokenizer = method, cfg, cfg.train, model, tokenizer
        self.accelerator, self.log = accelerator, log
        self.out = Path(self.tc.output_dir)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.t0 = time.time()
        self.state = TrainState()
        self.history: list[dict] = []
        self.window = MetricSums()  # metrics since the last logged step
        self.last_eval: dict = {}

    # ---- before training
    def plan(self, train_items: list, eval_items: list) -> None:
        """Global batch, steps and warmup from the config; refuses runs that cannot work, before anything loads."""
        tc, method = self.tc, self.method
        self.global_batch = method.global_batch(tc, self.world)
        if len(train_items) < self.global_batch:
            raise UserError(
                f"{len(train_items)} training examples, fewer than one global batch of {self.global_batch} "
                f"(train.batch_size {tc.batch_size} x train.grad_accum {tc.grad_accum} x {self.world} processes). "
                "Fix: lower train.batch_size or train.grad_accum, or add data"
            )
        if not eval_items and (tc.early_stopping_patience or tc.eval_steps or tc.keep_best):
            name = (
                "train.early_stopping_patience"
                if tc.early_stopping_patience
                else "train.keep_best"
                if tc.keep_best
                else "train.eval_steps"
            )
            raise UserError(
                f"{name} is set but there is no eval data. Fix: set data.eval to a file or "
                "data.eval_fraction to hold out part of train, or unset " + name
            )
        self.steps_per_epoch = len(train_items) // self.global_batch
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * self.steps_per_epoch))
        optimizer_steps = self.total_steps * method.optimizer_steps_per_step()
        self.optimizer_steps = optimizer_steps
        self.warmup = tc.warmup_steps or int(tc.warmup_ratio * optimizer_steps)
        epochs = f"{self.total_steps / self.steps_per_epoch:.2f} epochs of {len(train_items)}"
        if not method.online:
            self.log(
                f"global batch = {tc.batch_size} per device x {tc.grad_accum} accumulation x {self.world} "
                f"process(es) = {self.global_batch} examples/step; {self.total_steps} steps ({epochs} examples), "
                f"warmup {self.warmup}"
            )
        else:
            self.log(
                f"{self.global_batch} prompts/step; {self.total_steps} steps ({epochs} prompts), "
                f"{optimizer_steps} optimizer steps, warmup {self.warmup}"
            )

    def start(self, train_items: list, eval_items: list, resume: str | bool) -> tuple[list, list]:
        """Claim the output dir, let the method set up, build the optimizer and schedule, restore a checkpoint."""
        tc, method, accelerator = self.tc, self.method, self.accelerator
        if not resume:
            claim_output_dir(self.out, tc.overwrite, accelerator)
        train_items, eval_items = method.setup(self.model, train_items, eval_items, accelerator)
        self._build_optimizer()
        self._restore(len(train_items), resume)
        if accelerator.is_main_process:  # after the restore: a refused resume rewrites nothing of the run
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        # Early stopping and keep_best: one rule over the evaluations, its state in TrainState (so in checkpoints). On
        # a resume, best/ may hold a later eval than the checkpoint's best; the exact replay writes that eval again.
        self.keep_best = tc.keep_best if tc.keep_best is not None else tc.early_stopping_patience is not None
        self.best_dir = self.out / "best"
        self.stopper = None
        if tc.early_stopping_patience is not None or self.keep_best:
            self.stopper = EarlyStopping(
                tc.early_stopping_metric,
                tc.early_stopping_patience,
                tc.early_stopping_min_delta,
                tc.early_stopping_mode,
            )
            self.stopper.load_state_dict(self.state.__dict__)
        resumed_at = self.state.step if self.checkpoint is not None else None
        self.jsonl = JsonlLog(self.out / "metrics.jsonl", resumed_at) if accelerator.is_main_process else None
        if tc.report_to:
            accelerator.init_trackers(self.out.name, config={"method": method.name, "learning_rate": tc.learning_rate})
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc=f"{method.name}",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        return train_items, eval_items

    def _build_optimizer(self) -> None:
        """The wrapped module, fused AdamW over the trainable parameters and the LR schedule, prepared."""
        tc, model = self.tc, self.model
        if tc.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        self.wrapped = self.method.wrap(model)
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        optimizer, self.scheduler = make_optimizer(self.params, tc, self.warmup, self.optimizer_steps)
        self.module, self.optimizer = self.accelerator.prepare(self.wrapped, optimizer)
        self.module.train()

    def _restore(self, n_train: int, resume: str | bool) -> None:
        """Weights, optimizer, schedule, RNG, loop and method state from the checkpoint ``resume`` names (if any)."""
        self.expected = {"global_batch": self.global_batch, "num_train_examples": n_train, "seed": self.tc.seed}
        self.checkpoint = find_resume_checkpoint(self.out, resume)
        if self.checkpoint is None:
            return
        saved = load_checkpoint(
            self.checkpoint, self.wrapped, self.optimizer, self.scheduler, self.accelerator, self.expected
        )
        self.state = TrainState(**{k: saved[k] for k in TrainState.__dataclass_fields__ if k in saved})
        self.method.load_state_dict(saved.get("method_state", {}))
        self.log(f"resumed from {self.checkpoint} at step {self.state.step}")

    # ---- one step
    def train_step(self, train_items: list) -> dict[str, float]:
        """The step's global batch (this process's share) -> the method's updates, one optimizer step each ->
        the step's metrics reduced over processes."""
        step_t0 = time.time()
        indices = global_batch_indices(len(train_items), self.state.step, self.global_batch, self.tc.seed,
                                       self.tc.shuffle)  # fmt: skip
        mine = [train_items[i] for i in indices][self.rank :: self.world]
        sums, grad_norms = MetricSums(), []
        for update in self.method.updates(self.module, mine, self.state.step, sums):
            grad_norm = self.optimizer_step(update, sums)
            if grad_norm is not None:
                grad_norms.append(grad_norm)
        sums.add_scalar("tokens", 0.0, 1.0 / self.world)  # reduced: total tokens over all processes
        metrics = sums.reduce(self.accelerator)
        if grad_norms and not math.isfinite(metrics["loss"]):
            diverged(self.state.step + 1, metrics["loss"], float("nan"), self.out, mine)
        self.state.step += 1
        seconds = time.time() - step_t0
        metrics.update(
            grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
            learning_rate=self.scheduler.get_last_lr()[0],
            tokens_per_second=metrics.pop("tokens") / seconds,
            seconds_per_step=seconds,
        )
        metrics.update(self.method.end_step(metrics))
        for k, v in metrics.items():
            if not math.isnan(v):  # a metric over a subset (e.g. KTO's desirable rows) may be empty in a step
                self.window.add_scalar(k, v)
        self.bar.update(1)
        self.bar.set_postfix({k: f"{metrics[k]:.3g}" for k in PROGRESS_METRICS if k in metrics})
        return metrics

    def optimizer_step(self, items: list, sums: MetricSums) -> float | None:
        """One optimizer step on this process's ``items`` (micro-batches of train.batch_size); the loss of each
        example is weighted and divided by the total weight over all processes. Returns the gradient norm, or
        None when every example has weight 0 (nothing to learn from: no step)."""
        method, accelerator, world = self.method, self.accelerator, self.world
        total_weight = global_sum(sum(method.weight(x) for x in items), accelerator)
        if total_weight == 0:
            return None
        n_micro = max(1, math.ceil(len(items) / self.tc.batch_size))
        for micro in range(n_micro):
            chunk = items[micro * self.tc.batch_size : (micro + 1) * self.tc.batch_size]
            batch = {k: v.to(accelerator.device) for k, v in method.collate(chunk).items()}
            weights = torch.tensor([method.weight(x) for x in chunk], device=accelerator.device)
            sync = nullcontext() if micro == n_micro - 1 else accelerator.no_sync(self.module)
            with sync, accelerator.autocast():
                losses, metrics = method.loss(self.module, batch)
                loss = (losses * weights).sum() / total_weight
                accelerator.backward(loss * world)  # DDP averages gradients over processes
            sums.add_scalar("loss", float((losses.detach().float() * weights).sum()) / total_weight, 0.0)
            sums.add(metrics)
            sums.add_scalar("tokens", float(method.tokens(batch)), 0.0)
        sums.add_scalar("loss", 0.0, 1.0 / world)  # reduced: the global weighted mean, averaged over steps
        if self.tc.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(self.params, self.tc.max_grad_norm))
        else:
            norms = [p.grad.norm() for p in self.params if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        if not math.isfinite(grad_norm):  # the same on every process: gradients are all-reduced
            diverged(self.state.step + 1, float("nan"), grad_norm, self.out, items)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def log_step(self, metrics: dict[str, float]) -> None:
        """Every train.logging_steps (and at the last step): the mean of each metric since the last log."""
        step = self.state.step
        if step % self.tc.logging_steps and step != self.total_steps:
            return
        window = self.window
        logged = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            **self.method.summarize({k: window.sums[k] / window.counts[k] for k in window.sums}),
        }
        self.window = MetricSums()
        self.history.append(logged)
        self._record(logged)

    def evaluate_if_due(self, eval_items: list) -> None:
        """Every train.eval_steps (and at the last step): eval metrics, then early stopping and best weights."""
        step, tc = self.state.step, self.tc
        if not eval_items or not ((tc.eval_steps and step % tc.eval_steps == 0) or step == self.total_steps):
            return
        with freed_memory_given_back():
            self.last_eval = evaluate(self.method, self.module, eval_items, tc.eval_batch_size, self.accelerator)
        self._record({"step": step, **self.last_eval})
        self.history.append({"step": step, **self.last_eval})
        self.bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in self.last_eval.items()))
        if self.stopper is None:
            return
        decision = self.stopper.update(step, self.stopper.value_of(self.last_eval))
        for k, v in self.stopper.state_dict().items():
            setattr(self.state, k, v)
        if decision.improved and self.keep_best:
            self._save_best(decision)
        if decision.stop:
            self.log(self.stopper.message(step))

    def checkpoint_if_due(self) -> None:
        """Every train.save_steps, before the last step (the last checkpoint is written by ``finish``)."""
        step = self.state.step
        if self.tc.save_steps and step % self.tc.save_steps == 0 and step < self.total_steps:
            self._save_checkpoint(step)

    # ---- after training
    def finish(self, train_items: list, eval_items: list) -> TrainResult:
        """The final model (and the method's files) to output_dir/model, the last checkpoint; the result."""
        self.bar.close()
        accelerator, state = self.accelerator, self.state
        model_dir = self.out / "model"
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(self.module)
            extra = self.method.finish(unwrapped, train_items, eval_items, self.last_eval)
            save_model(unwrapped.model, self.tokenizer, model_dir, extra)
        if self.tc.save_steps:
            self._save_checkpoint(state.step)
        if self.tc.report_to:
            accelerator.end_training()
        train_logs = [h for h in self.history if "loss" in h]
        result = TrainResult(
            self.out,
            model_dir,
            state.step,
            train_logs[-1] if train_logs else {},
            self.last_eval,
            time.time() - self.t0,
            peak_memory_mb(accelerator.device),
            state.stopped_early,
            self.history,
            state.best_step,
            state.best_metric,
            self.best_dir if self.keep_best and state.best_step is not None else None,
        )
        self.log(
            f"done: {state.step} steps in {result.wall_seconds:.1f}s, peak memory {result.peak_memory_mb:.0f} MB; "
            f"model saved to {model_dir}"
        )
        if state.best_step is not None:
            where = f"; its weights are in {self.best_dir}" if result.best_dir else ""
            self.log(
                f"best eval: step {state.best_step}, {self.tc.early_stopping_metric} {state.best_metric:.4g}{where} "
                f"({model_dir.name}/ holds the last step, {state.step})"
            )
        return result

    # ---- writing
    def _record(self, metrics: dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(metrics)
        if self.tc.report_to:
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def _save_checkpoint(self, step: int) -> None:
        state = {**self.expected, **self.state.__dict__, "method": self.method.name,
                 "method_state": self.method.state_dict()}  # fmt: skip
        save_checkpoint(self.out, step, self.wrapped, self.optimizer, self.scheduler, state, self.accelerator,
                        self.tc.keep_last, yaml.safe_dump(to_dict(self.cfg), sort_keys=False))  # fmt: skip

    def _save_best(self, decision) -> None:
        """The weights of a new best eval -> ``output_dir/best`` (model/'s layout + best.json), atomically."""
        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(self.module)
            info = {
                "step": decision.step,
                "metric": self.stopper.metric,
                "value": decision.value,
                "mode": "max" if self.stopper.maximize else "min",
            }
            files = {
                **self.method.best_files(unwrapped, self.last_eval),
                "best.json": json.dumps(info, indent=1) + "\n",
            }
            save_model(unwrapped.model, self.tokenizer, self.best_dir, files)
        self.accelerator.wait_for_everyone()
        self.log(f"step {decision.step}: new best {self.stopper.metric} {decision.value:.4g}; weights saved to "
                 f"{self.best_dir}")  # fmt: skip


def evaluate(method: Method, module, items: list, batch_size: int, accelerator) -> dict[str, float]:
    """``method.evaluate`` on ``items`` in eval mode; metric names get the ``eval/`` prefix."""
    was_training = module.training
    module.eval()
    try:
        metrics = method.evaluate(module, items, batch_size, accelerator)
    finally:
        module.train(was_training)
    return {f"eval/{k}": v for k, v in metrics.items()}
