"""The sections every training config has: ``model``, ``lora``, ``data``, ``train`` (``RunConfig``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignkit.config.base import EMBEDDED_MODEL, require, setting


@dataclass
class ModelConfig:
    name: str = setting(EMBEDDED_MODEL, "Local HF directory, hub id, or the embedded default 'smollm2-135m-instruct'.")
    dtype: str = setting(
        "auto",
        "fp32, or bf16 (autocast, fp32 master weights); auto = bf16 where the GPU or CPU has native bf16, else fp32.",
        ("auto", "fp32", "bf16"),
    )
    device: str = setting(
        "auto", "cpu, cuda, mps; auto picks cuda, then mps, then cpu.", ("auto", "cpu", "cuda", "mps")
    )
    trust_remote_code: bool = setting(False, "Allow model code from the hub (only for models you trust).")


@dataclass
class LoRAConfig:
    r: int = setting(16, "LoRA rank.")
    alpha: int = setting(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = setting(0.05, "Dropout on the LoRA input.")
    target_modules: Any = setting("all-linear", "'all-linear' or a list of module names, e.g. [q_proj, v_proj].")

    def validate(self, where: str) -> None:
        require(self.r >= 1, where, "lora.r", self.r, "use a rank of at least 1, e.g. 16")
        require(0 <= self.dropout < 1, where, "lora.dropout", self.dropout, "use a value in [0, 1)")
        ok = self.target_modules == "all-linear" or (
            isinstance(self.target_modules, list)
            and self.target_modules
            and all(isinstance(m, str) for m in self.target_modules)
        )
        require(ok, where, "lora.target_modules", self.target_modules, "use 'all-linear' or a list of module names")


@dataclass
class DataConfig:
    train: str = setting(
        "", "Training data: .jsonl/.jsonl.gz/.json/.parquet/.csv, a saved HF dataset dir, or a hub id."
    )
    eval: str | None = setting(None, "Held-out data (same formats). None: use eval_fraction of train, or no eval.")
    split: str = setting("train", "Split to read when train/eval name an HF dataset.")
    eval_fraction: float = setting(0.0, "Fraction of train held out for eval when 'eval' is not given (seeded).")
    max_examples: int | None = setting(None, "Use only the first N training records (quick runs).")
    max_length: int = setting(1024, "Max tokens of prompt + completion.")
    max_prompt_length: int | None = setting(
        None, "Max prompt tokens before completions are cut; None = max_length // 2."
    )
    prompt_truncation: str = setting(
        "keep_end", "Which end of an over-long prompt to keep.", ("keep_end", "keep_start")
    )
    overlong: str = setting(
        "truncate",
        "Records over max_length: truncate (counted), skip (counted) or error.",
        ("truncate", "skip", "error"),
    )
    on_invalid: str = setting(
        "error", "Invalid records: error (list them and stop) or skip (count and go on).", ("error", "skip")
    )
    prompt_field: str = setting(
        "prompt", "Prompt-only data (online methods): the field holding the prompt, e.g. question."
    )
    prompt_template: str | None = setting(
        None, "Prompt-only text prompts: a str.format pattern over the record's fields, e.g. '{question} Answer:'."
    )

    def validate(self, where: str) -> None:
        require(bool(self.train), where, "data.train", self.train, "set data.train to a data file")
        require(0 <= self.eval_fraction < 1, where, "data.eval_fraction", self.eval_fraction, "use a value in [0, 1)")
        require(
            self.max_examples is None or self.max_examples >= 1,
            where,
            "data.max_examples",
            self.max_examples,
            "use a whole number >= 1, or null for all records",
        )
        require(self.max_length >= 8, where, "data.max_length", self.max_length, "use at least 8 tokens")
        if self.max_prompt_length is not None:
            require(
                1 <= self.max_prompt_length < self.max_length,
                where,
                "data.max_prompt_length",
                self.max_prompt_length,
                f"use a value below data.max_length ({self.max_length})",
            )


@dataclass
class TrainConfig:
    output_dir: str = setting("runs/alignkit", "Where checkpoints, metrics.jsonl, the config and the final model go.")
    overwrite: bool = setting(
        False, "Start afresh in an output_dir that already holds a run (its checkpoints are deleted)."
    )
    seed: int = setting(42, "Seed for data order, initialization of LoRA and sampling.")
    shuffle: bool = setting(True, "Reshuffle the training examples each epoch; false keeps file order (benchmarks).")
    learning_rate: float = setting(5e-6, "Peak learning rate of AdamW.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    adam_betas: list = setting([0.9, 0.999], "AdamW betas.")
    lr_scheduler: str = setting("cosine", "Schedule after warmup.", ("cosine", "linear", "constant"))
    warmup_ratio: float = setting(0.1, "Warmup length as a fraction of total steps (ignored if warmup_steps > 0).")
    warmup_steps: int = setting(0, "Warmup length in optimizer steps.")
    epochs: float = setting(1.0, "Passes over the training data (fractional allowed).")
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = setting(4, "Examples (pairs, for preference methods) per device per micro-step.")
    grad_accum: int = setting(1, "Micro-steps accumulated per optimizer step.")
    eval_batch_size: int = setting(8, "Examples per device per eval forward.")
    max_grad_norm: float | None = setting(1.0, "Clip the global gradient norm to this; None disables clipping.")
    logging_steps: int = setting(10, "Log averaged metrics every N optimizer steps.")
    eval_steps: int | None = setting(None, "Evaluate every N steps (and at the end); None = only at the end.")
    save_steps: int | None = setting(None, "Write a checkpoint every N steps; None = only the final model.")
    keep_last: int = setting(2, "Checkpoints to keep (oldest deleted first).")
    early_stopping_metric: str = setting(
        "eval/loss",
        "Eval metric watched for early stopping and keep_best; ideally a gold metric the run does not train on: "
        "online methods' eval/gold/reward (method.gold_reward_model), or for offline methods any eval metric, e.g. "
        "eval/rewards/accuracies on gold-labeled data.eval pairs.",
    )
    early_stopping_patience: int | None = setting(None, "Stop after N evals without improvement; None disables.")
    early_stopping_min_delta: float = setting(0.0, "An eval improves only if it beats the best by more than this.")
    early_stopping_mode: str = setting(
        "auto",
        "max or min the metric; auto minimizes names with loss, nll or kl, maximizes others.",
        ("auto", "max", "min"),
    )
    keep_best: bool | None = setting(
        None,
        "Write the weights of each new best eval (early_stopping_metric) to output_dir/best (layout of model/, plus "
        "best.json); model/ stays the last step. None = on when early_stopping_patience is set.",
    )
    report_to: list = setting(
        [], "Extra trackers through accelerate: tensorboard, wandb, mlflow (metrics.jsonl is always written)."
    )
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward to save memory.")
    logprob_chunk_size: int = setting(1024, "Positions per chunk in the fused log-prob head.")
    prefix_sharing: bool = setting(
        True,
        "Pairs: encode the prompt once (one row prompt+chosen+rejected, 4D mask); off where the model cannot.",
    )
    packing: bool = setting(
        True,
        "With prefix sharing: all pairs of a batch in one unpadded row, attention run per pair (SDPA models).",
    )
    reuse_cpu_memory: bool = setting(
        True,
        "CPU on Linux: glibc malloc keeps freed memory for reuse during the training loop (no page faults each "
        "step, ~1.1x faster; the peak rises ~10% from fragmentation); given back when the loop ends.",
    )

    def validate(self, where: str) -> None:
        require(
            self.learning_rate > 0, where, "train.learning_rate", self.learning_rate, "use a positive value, e.g. 5e-6"
        )
        for name in ("batch_size", "grad_accum", "eval_batch_size", "logging_steps", "keep_last", "logprob_chunk_size"):
            require(getattr(self, name) >= 1, where, f"train.{name}", getattr(self, name), "use a whole number >= 1")
        for name in ("max_steps", "eval_steps", "save_steps", "early_stopping_patience"):
            value = getattr(self, name)
            require(value is None or value >= 1, where, f"train.{name}", value, "use a whole number >= 1, or null")
        require(
            self.early_stopping_min_delta >= 0,
            where,
            "train.early_stopping_min_delta",
            self.early_stopping_min_delta,
            "use 0 or a positive margin, e.g. 0.01",
        )
        require(
            self.early_stopping_mode in ("auto", "max", "min"),
            where,
            "train.early_stopping_mode",
            self.early_stopping_mode,
            "use auto, max or min",
        )
        require(self.epochs > 0, where, "train.epochs", self.epochs, "use a positive number of epochs")
        require(0 <= self.warmup_ratio < 1, where, "train.warmup_ratio", self.warmup_ratio, "use a value in [0, 1)")
        require(
            len(self.adam_betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.adam_betas),
            where,
            "train.adam_betas",
            self.adam_betas,
            "use two values in [0, 1), e.g. [0.9, 0.999]",
        )
        require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            where,
            "train.max_grad_norm",
            self.max_grad_norm,
            "use a positive value or null",
        )
        unknown = set(self.report_to) - {"tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"}
        require(
            not unknown,
            where,
            "train.report_to",
            self.report_to,
            "use tracker names accelerate knows, e.g. [tensorboard]",
        )


@dataclass
class RunConfig:
    """Fields every training stage shares."""

    model: ModelConfig = setting(ModelConfig(), "The policy model.")
    lora: LoRAConfig | None = setting(None, "LoRA adapter settings; null = full fine-tuning.")
    data: DataConfig = setting(DataConfig(), "Data files and tokenization limits.")
    train: TrainConfig = setting(TrainConfig(), "Optimization, logging, evaluation and checkpoints.")

    def validate(self, where: str = "config") -> None:
        self.data.validate(where)
        self.train.validate(where)
        if self.lora is not None:
            self.lora.validate(where)
