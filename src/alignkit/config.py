"""Typed configs: one dataclass per stage, loaded from YAML plus ``--set key=value`` overrides.

Every field has a comment-docstring in ``help``; values are type-checked and validated on load, and every
error names the field (``train.learning_rate``), the file, and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import ConfigError
from alignkit.losses import LOSSES

EMBEDDED_MODEL = "smollm2-135m-instruct"


def _f(default: Any, help: str, choices: tuple | None = None, **kw):
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _copy(value):
    return copy.deepcopy(value)  # every config gets its own lists and sub-configs


@dataclass
class ModelConfig:
    name: str = _f(EMBEDDED_MODEL, "Local HF directory, hub id, or the embedded default 'smollm2-135m-instruct'.")
    dtype: str = _f(
        "auto",
        "fp32, or bf16 (autocast, fp32 master weights); auto = bf16 where the GPU or CPU has native bf16, else fp32.",
        ("auto", "fp32", "bf16"),
    )
    device: str = _f("auto", "cpu, cuda, mps; auto picks cuda, then mps, then cpu.", ("auto", "cpu", "cuda", "mps"))
    trust_remote_code: bool = _f(False, "Allow model code from the hub (only for models you trust).")


@dataclass
class LoRAConfig:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.05, "Dropout on the LoRA input.")
    target_modules: Any = _f("all-linear", "'all-linear' or a list of module names, e.g. [q_proj, v_proj].")

    def validate(self, where: str) -> None:
        _require(self.r >= 1, where, "lora.r", self.r, "use a rank of at least 1, e.g. 16")
        _require(0 <= self.dropout < 1, where, "lora.dropout", self.dropout, "use a value in [0, 1)")
        ok = self.target_modules == "all-linear" or (
            isinstance(self.target_modules, list)
            and self.target_modules
            and all(isinstance(m, str) for m in self.target_modules)
        )
        _require(ok, where, "lora.target_modules", self.target_modules, "use 'all-linear' or a list of module names")


@dataclass
class DataConfig:
    train: str = _f("", "Training data: .jsonl/.jsonl.gz/.json/.parquet/.csv, a saved HF dataset dir, or a hub id.")
    eval: str | None = _f(None, "Held-out data (same formats). None: use eval_fraction of train, or no eval.")
    split: str = _f("train", "Split to read when train/eval name an HF dataset.")
    eval_fraction: float = _f(0.0, "Fraction of train held out for eval when 'eval' is not given (seeded).")
    max_examples: int | None = _f(None, "Use only the first N training records (quick runs).")
    max_length: int = _f(1024, "Max tokens of prompt + completion.")
    max_prompt_length: int | None = _f(None, "Max prompt tokens before completions are cut; None = max_length // 2.")
    prompt_truncation: str = _f("keep_end", "Which end of an over-long prompt to keep.", ("keep_end", "keep_start"))
    overlong: str = _f(
        "truncate",
        "Records over max_length: truncate (counted), skip (counted) or error.",
        ("truncate", "skip", "error"),
    )
    on_invalid: str = _f(
        "error", "Invalid records: error (list them and stop) or skip (count and go on).", ("error", "skip")
    )
    prompt_field: str = _f("prompt", "Prompt-only data (online methods): the field holding the prompt, e.g. question.")
    prompt_template: str | None = _f(
        None, "Prompt-only text prompts: a str.format pattern over the record's fields, e.g. '{question} Answer:'."
    )

    def validate(self, where: str) -> None:
        _require(bool(self.train), where, "data.train", self.train, "set data.train to a data file")
        _require(0 <= self.eval_fraction < 1, where, "data.eval_fraction", self.eval_fraction, "use a value in [0, 1)")
        _require(
            self.max_examples is None or self.max_examples >= 1,
            where,
            "data.max_examples",
            self.max_examples,
            "use a whole number >= 1, or null for all records",
        )
        _require(self.max_length >= 8, where, "data.max_length", self.max_length, "use at least 8 tokens")
        if self.max_prompt_length is not None:
            _require(
                1 <= self.max_prompt_length < self.max_length,
                where,
                "data.max_prompt_length",
                self.max_prompt_length,
                f"use a value below data.max_length ({self.max_length})",
            )


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/alignkit", "Where checkpoints, metrics.jsonl, the config and the final model go.")
    overwrite: bool = _f(False, "Start afresh in an output_dir that already holds a run (its checkpoints are deleted).")
    seed: int = _f(42, "Seed for data order, initialization of LoRA and sampling.")
    shuffle: bool = _f(True, "Reshuffle the training examples each epoch; false keeps file order (benchmarks).")
    learning_rate: float = _f(5e-6, "Peak learning rate of AdamW.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_betas: list = _f([0.9, 0.999], "AdamW betas.")
    lr_scheduler: str = _f("cosine", "Schedule after warmup.", ("cosine", "linear", "constant"))
    warmup_ratio: float = _f(0.1, "Warmup length as a fraction of total steps (ignored if warmup_steps > 0).")
    warmup_steps: int = _f(0, "Warmup length in optimizer steps.")
    epochs: float = _f(1.0, "Passes over the training data (fractional allowed).")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = _f(4, "Examples (pairs, for preference methods) per device per micro-step.")
    grad_accum: int = _f(1, "Micro-steps accumulated per optimizer step.")
    eval_batch_size: int = _f(8, "Examples per device per eval forward.")
    max_grad_norm: float | None = _f(1.0, "Clip the global gradient norm to this; None disables clipping.")
    logging_steps: int = _f(10, "Log averaged metrics every N optimizer steps.")
    eval_steps: int | None = _f(None, "Evaluate every N steps (and at the end); None = only at the end.")
    save_steps: int | None = _f(None, "Write a checkpoint every N steps; None = only the final model.")
    keep_last: int = _f(2, "Checkpoints to keep (oldest deleted first).")
    early_stopping_metric: str = _f(
        "eval/loss",
        "Eval metric watched for early stopping and keep_best; ideally a gold metric the run does not train on: "
        "online methods' eval/gold/reward (method.gold_reward_model), or for offline methods any eval metric, e.g. "
        "eval/rewards/accuracies on gold-labeled data.eval pairs.",
    )
    early_stopping_patience: int | None = _f(None, "Stop after N evals without improvement; None disables.")
    early_stopping_min_delta: float = _f(0.0, "An eval improves only if it beats the best by more than this.")
    early_stopping_mode: str = _f(
        "auto",
        "max or min the metric; auto minimizes names with loss, nll or kl, maximizes others.",
        ("auto", "max", "min"),
    )
    keep_best: bool | None = _f(
        None,
        "Write the weights of each new best eval (early_stopping_metric) to output_dir/best (layout of model/, plus "
        "best.json); model/ stays the last step. None = on when early_stopping_patience is set.",
    )
    report_to: list = _f(
        [], "Extra trackers through accelerate: tensorboard, wandb, mlflow (metrics.jsonl is always written)."
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    logprob_chunk_size: int = _f(1024, "Positions per chunk in the fused log-prob head.")
    prefix_sharing: bool = _f(
        True,
        "Pairs: encode the prompt once (one row prompt+chosen+rejected, 4D mask); off where the model cannot.",
    )
    packing: bool = _f(
        True,
        "With prefix sharing: all pairs of a batch in one unpadded row, attention run per pair (SDPA models).",
    )
    reuse_cpu_memory: bool = _f(
        True, "CPU on Linux: glibc malloc keeps freed memory for reuse (no page faults each step; process-wide)."
    )

    def validate(self, where: str) -> None:
        _require(
            self.learning_rate > 0, where, "train.learning_rate", self.learning_rate, "use a positive value, e.g. 5e-6"
        )
        for name in ("batch_size", "grad_accum", "eval_batch_size", "logging_steps", "keep_last", "logprob_chunk_size"):
            _require(getattr(self, name) >= 1, where, f"train.{name}", getattr(self, name), "use a whole number >= 1")
        for name in ("max_steps", "eval_steps", "save_steps", "early_stopping_patience"):
            value = getattr(self, name)
            _require(value is None or value >= 1, where, f"train.{name}", value, "use a whole number >= 1, or null")
        _require(
            self.early_stopping_min_delta >= 0,
            where,
            "train.early_stopping_min_delta",
            self.early_stopping_min_delta,
            "use 0 or a positive margin, e.g. 0.01",
        )
        _require(
            self.early_stopping_mode in ("auto", "max", "min"),
            where,
            "train.early_stopping_mode",
            self.early_stopping_mode,
            "use auto, max or min",
        )
        _require(self.epochs > 0, where, "train.epochs", self.epochs, "use a positive number of epochs")
        _require(0 <= self.warmup_ratio < 1, where, "train.warmup_ratio", self.warmup_ratio, "use a value in [0, 1)")
        _require(
            len(self.adam_betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.adam_betas),
            where,
            "train.adam_betas",
            self.adam_betas,
            "use two values in [0, 1), e.g. [0.9, 0.999]",
        )
        _require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            where,
            "train.max_grad_norm",
            self.max_grad_norm,
            "use a positive value or null",
        )
        unknown = set(self.report_to) - {"tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"}
        _require(
            not unknown,
            where,
            "train.report_to",
            self.report_to,
            "use tracker names accelerate knows, e.g. [tensorboard]",
        )


@dataclass
class RunConfig:
    """Fields every training stage shares."""

    model: ModelConfig = _f(ModelConfig(), "The policy model.")
    lora: LoRAConfig | None = _f(None, "LoRA adapter settings; null = full fine-tuning.")
    data: DataConfig = _f(DataConfig(), "Data files and tokenization limits.")
    train: TrainConfig = _f(TrainConfig(), "Optimization, logging, evaluation and checkpoints.")

    def validate(self, where: str = "config") -> None:
        self.data.validate(where)
        self.train.validate(where)
        if self.lora is not None:
            self.lora.validate(where)


@dataclass
class SFTMethodConfig:
    pass


@dataclass
class SFTConfig(RunConfig):
    """Supervised fine-tuning on prompt/completion or chat ``messages`` records (completion tokens only)."""

    method: SFTMethodConfig = _f(SFTMethodConfig(), "SFT has no method parameters.")


class LossDefaults:
    """The defaults a DPO-family config resolves from its ``loss``: beta and the weight of the NLL term."""

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else (2.0 if self.loss == "simpo" else 0.1)

    @property
    def resolved_sft_weight(self) -> float:
        return self.sft_weight if self.sft_weight is not None else LOSSES[self.loss].default_sft_weight


@dataclass
class PreferenceMethodConfig(LossDefaults):
    loss: str = _f("dpo", "Preference loss.", tuple(LOSSES))
    beta: float | None = _f(
        None, "Loss temperature; None = the loss's default (dpo/ipo/hinge/robust/orpo 0.1, simpo 2.0)."
    )
    label_smoothing: float = _f(0.0, "Assumed label-noise rate for dpo (cDPO) and robust; in [0, 0.5).")
    gamma: float = _f(1.0, "SimPO target reward margin.")
    sft_weight: float | None = _f(
        None, "Weight of an NLL term on chosen added to the loss; None = the method's default (orpo 1, others 0)."
    )
    reference: str = _f(
        "precompute",
        "Reference log-probs: precompute once before training (no reference model held), "
        "or live (frozen copy, or adapter disabled under LoRA).",
        ("precompute", "live"),
    )
    ref_model: str | None = _f(None, "A different reference model (path or hub id); None = the initial policy.")
    reference_cache: bool = _f(
        True, "Keep precomputed reference log-probs on disk, keyed by model, data and precision; reuse on reruns."
    )

    def validate(self, where: str) -> None:
        _require(self.beta is None or self.beta > 0, where, "method.beta", self.beta, "use a positive value, e.g. 0.1")
        _require(
            0 <= self.label_smoothing < 0.5,
            where,
            "method.label_smoothing",
            self.label_smoothing,
            "use a value in [0, 0.5)",
        )
        _require(
            self.sft_weight is None or self.sft_weight >= 0,
            where,
            "method.sft_weight",
            self.sft_weight,
            "use a value >= 0",
        )
        if self.loss == "robust":
            _require(
                self.label_smoothing > 0,
                where,
                "method.label_smoothing",
                self.label_smoothing,
                "robust DPO needs the assumed noise rate, e.g. 0.1",
            )
        if not LOSSES[self.loss].needs_reference and self.ref_model:
            raise ConfigError(
                f"{where}: method.ref_model is set but loss '{self.loss}' uses no reference model. "
                "Fix: remove method.ref_model, or pick a loss with a reference (dpo, ipo, hinge, robust)."
            )


@dataclass
class PreferenceConfig(RunConfig):
    """The DPO family on pairwise preferences: dpo, ipo, hinge, robust, simpo, orpo."""

    method: PreferenceMethodConfig = _f(PreferenceMethodConfig(), "Preference loss and reference settings.")

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.method.validate(where)


@dataclass
class KTOMethodConfig:
    beta: float = _f(0.1, "KTO temperature beta.")
    desirable_weight: float = _f(1.0, "lambda_D, weight of desirable (thumbs-up) examples.")
    undesirable_weight: float = _f(1.0, "lambda_U, weight of undesirable (thumbs-down) examples.")
    reference: str = _f("precompute", "Reference log-probs: precompute once, or live.", ("precompute", "live"))
    ref_model: str | None = _f(None, "A different reference model (path or hub id); None = the initial policy.")
    reference_cache: bool = _f(
        True, "Keep precomputed reference log-probs on disk, keyed by model, data and precision; reuse on reruns."
    )

    def validate(self, where: str) -> None:
        _require(self.beta > 0, where, "method.beta", self.beta, "use a positive value, e.g. 0.1")
        for name in ("desirable_weight", "undesirable_weight"):
            _require(getattr(self, name) > 0, where, f"method.{name}", getattr(self, name), "use a positive weight")


@dataclass
class KTOConfig(RunConfig):
    """KTO on binary feedback: prompt/completion/label records (label true = desirable)."""

    method: KTOMethodConfig = _f(KTOMethodConfig(), "KTO loss and reference settings.")

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.method.validate(where)


@dataclass
class RewardMethodConfig:
    margin: float = _f(0.0, "Required reward gap m in -log sigma(r_c - r_r - m) (Llama 2's margin); 0 = plain BT.")
    center_weight: float = _f(0.0, "Reward-centering weight eta * (r_c + r_r)^2 (keeps rewards near 0); 0 = off.")
    heads: int = _f(1, "Scalar heads on one trunk; > 1 makes a K-head ensemble (each head its own bootstrap).")
    freeze_trunk: bool = _f(False, "Train only the head(s) on a frozen backbone: cheap, memory-light ensembles.")
    ensemble_size: int = _f(1, "Train this many reward models (seed + k) into output_dir/member-k.")
    bootstrap: bool = _f(
        False, "Each member trains on a bootstrap resample (heads: Poisson(1) weights per pair and head)."
    )
    chat_format: bool = _f(
        True, "Score text prompts/responses as a one-turn chat through the tokenizer's template (if it has one)."
    )
    norm_pairs: int = _f(256, "Training pairs scored after training for the reward mean/std saved with the model.")
    calibration_bins: int = _f(10, "Confidence bins of the expected calibration error (ECE).")

    def validate(self, where: str) -> None:
        _require(self.margin >= 0, where, "method.margin", self.margin, "use 0 or a positive gap, e.g. 0.5")
        _require(self.center_weight >= 0, where, "method.center_weight", self.center_weight, "use 0 or e.g. 0.01")
        for name in ("heads", "ensemble_size", "norm_pairs"):
            _require(getattr(self, name) >= 1, where, f"method.{name}", getattr(self, name), "use a whole number >= 1")
        _require(self.calibration_bins >= 2, where, "method.calibration_bins", self.calibration_bins, "use e.g. 10")


@dataclass
class RewardConfig(RunConfig):
    """Reward model (Bradley-Terry) on pairwise preferences: a scalar head on a causal-LM backbone."""

    method: RewardMethodConfig = _f(RewardMethodConfig(), "Reward-model loss, heads and ensemble settings.")

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.method.validate(where)
        _require(
            not (self.method.freeze_trunk and self.lora is not None),
            where,
            "method.freeze_trunk",
            True,
            "a frozen trunk trains only the head; remove the lora section or set method.freeze_trunk=false",
        )


# ----------------------------------------------------------------------------------------------- loading


def load_config(
    cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> Any:
    """Build ``cls`` from a YAML file (optional), a dict, and ``key.sub=value`` overrides, then validate."""
    data: dict = dict(base or {})
    where = str(path) if path else "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist. Fix: pass a path to a YAML file, e.g. configs/dpo.yaml"
            )
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, train, ...)")
        data = _deep_merge(data, loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: use --set section.field=value, e.g. --set train.learning_rate=1e-5")
        data = _deep_merge(data, _nest(key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None))
        where = f"{where} (with --set overrides)" if "--set" not in where else where
    cfg = from_dict(cls, data, where)
    cfg.validate(where)
    return cfg


def from_dict(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """Recursively build dataclass ``cls`` from a mapping, checking names and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        guess = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean '{prefix}{guess[0]}'?" if guess else f"known fields: {', '.join(names)}"
        raise ConfigError(f"{where}: unknown field '{prefix}{key}'. Fix: {hint}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where, f"{prefix}{name}", names[name])
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, name: str, f: dataclasses.Field) -> Any:
    optional = _is_optional(tp)
    inner = _strip_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ConfigError(f"{where}: field '{name}' may not be null. Fix: give a value ({f.metadata.get('help', '')})")
    if dataclasses.is_dataclass(inner):
        return from_dict(inner, value, where, name + ".")
    choices = f.metadata.get("choices")
    out = value
    if inner is bool:
        if not isinstance(value, bool):
            raise _type_error(where, name, value, "true or false")
    elif inner is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not _is_int(value):
            raise _type_error(where, name, value, "a whole number")
        out = int(float(value))
    elif inner is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        except (TypeError, ValueError):
            raise _type_error(where, name, value, "a number") from None
    elif inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _type_error(where, name, value, "a string")
        out = str(value)
    elif inner is list:
        if not isinstance(value, list):
            out = [value] if isinstance(value, str) else None
            if out is None:
                raise _type_error(where, name, value, "a list")
    if choices and out not in choices:
        guess = difflib.get_close_matches(str(out), [str(c) for c in choices], n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise ConfigError(f"{where}: field '{name}' is {out!r}; it must be one of {', '.join(map(str, choices))}{hint}")
    return out


def _is_int(value: Any) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _type_error(where: str, name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where}: field '{name}' is {value!r}; expected {expected}")


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if _is_optional(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return tp


def _require(ok: bool, where: str, name: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: field '{name}' is {value!r}. Fix: {fix}")


def _nest(keys: list[str], value: Any) -> dict:
    return {keys[0]: _nest(keys[1:], value) if len(keys) > 1 else value}


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict:
    """Plain dict of a config (for saving next to a run)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
