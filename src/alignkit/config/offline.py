"""Configs of the offline methods: SFT, the DPO family (preference pairs), KTO (binary feedback), reward models."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.config.base import require, setting
from alignkit.config.sections import RunConfig
from alignkit.errors import ConfigError
from alignkit.losses import LOSSES


@dataclass
class SFTMethodConfig:
    pass


@dataclass
class SFTConfig(RunConfig):
    """Supervised fine-tuning on prompt/completion or chat ``messages`` records (completion tokens only)."""

    method: SFTMethodConfig = setting(SFTMethodConfig(), "SFT has no method parameters.")


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
    loss: str = setting("dpo", "Preference loss.", tuple(LOSSES))
    beta: float | None = setting(
        None, "Loss temperature; None = the loss's default (dpo/ipo/hinge/robust/orpo 0.1, simpo 2.0)."
    )
    label_smoothing: float = setting(0.0, "Assumed label-noise rate for dpo (cDPO) and robust; in [0, 0.5).")
    gamma: float = setting(1.0, "SimPO target reward margin.")
    sft_weight: float | None = setting(
        None, "Weight of an NLL term on chosen added to the loss; None = the method's default (orpo 1, others 0)."
    )
    reference: str = setting(
        "precompute",
        "Reference log-probs: precompute once before training (no reference model held), "
        "or live (frozen copy, or adapter disabled under LoRA).",
        ("precompute", "live"),
    )
    ref_model: str | None = setting(None, "A different reference model (path or hub id); None = the initial policy.")
    reference_cache: bool = setting(
        True, "Keep precomputed reference log-probs on disk, keyed by model, data and precision; reuse on reruns."
    )

    def validate(self, where: str) -> None:
        require(self.beta is None or self.beta > 0, where, "method.beta", self.beta, "use a positive value, e.g. 0.1")
        require(
            0 <= self.label_smoothing < 0.5,
            where,
            "method.label_smoothing",
            self.label_smoothing,
            "use a value in [0, 0.5)",
        )
        require(
            self.sft_weight is None or self.sft_weight >= 0,
            where,
            "method.sft_weight",
            self.sft_weight,
            "use a value >= 0",
        )
        if self.loss == "robust":
            require(
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

    method: PreferenceMethodConfig = setting(PreferenceMethodConfig(), "Preference loss and reference settings.")

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.method.validate(where)


@dataclass
class KTOMethodConfig:
    beta: float = setting(0.1, "KTO temperature beta.")
    desirable_weight: float = setting(1.0, "lambda_D, weight of desirable (thumbs-up) examples.")
    undesirable_weight: float = setting(1.0, "lambda_U, weight of undesirable (thumbs-down) examples.")
    reference: str = setting("precompute", "Reference log-probs: precompute once, or live.", ("precompute", "live"))
    ref_model: str | None = setting(None, "A different reference model (path or hub id); None = the initial policy.")
    reference_cache: bool = setting(
        True, "Keep precomputed reference log-probs on disk, keyed by model, data and precision; reuse on reruns."
    )

    def validate(self, where: str) -> None:
        require(self.beta > 0, where, "method.beta", self.beta, "use a positive value, e.g. 0.1")
        for name in ("desirable_weight", "undesirable_weight"):
            require(getattr(self, name) > 0, where, f"method.{name}", getattr(self, name), "use a positive weight")


@dataclass
class KTOConfig(RunConfig):
    """KTO on binary feedback: prompt/completion/label records (label true = desirable)."""

    method: KTOMethodConfig = setting(KTOMethodConfig(), "KTO loss and reference settings.")

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.method.validate(where)


@dataclass
class RewardMethodConfig:
    margin: float = setting(0.0, "Required reward gap m in -log sigma(r_c - r_r - m) (Llama 2's margin); 0 = plain BT.")
    center_weight: float = setting(0.0, "Reward-centering weight eta * (r_c + r_r)^2 (keeps rewards near 0); 0 = off.")
    heads: int = setting(1, "Scalar heads on one trunk; > 1 makes a K-head ensemble (each head its own bootstrap).")
    freeze_trunk: bool = setting(False, "Train only the head(s) on a frozen backbone: cheap, memory-light ensembles.")
    ensemble_size: int = setting(1, "Train this many reward models (seed + k) into output_dir/member-k.")
    bootstrap: bool = setting(
        False, "Each member trains on a bootstrap resample (heads: Poisson(1) weights per pair and head)."
    )
    chat_format: bool = setting(
        True, "Score text prompts/responses as a one-turn chat through the tokenizer's template (if it has one)."
    )
    norm_pairs: int = setting(256, "Training pairs scored after training for the reward mean/std saved with the model.")
    calibration_bins: int = setting(10, "Confidence bins of the expected calibration error (ECE).")

    def validate(self, where: str) -> None:
        require(self.margin >= 0, where, "method.margin", self.margin, "use 0 or a positive gap, e.g. 0.5")
        require(self.center_weight >= 0, where, "method.center_weight", self.center_weight, "use 0 or e.g. 0.01")
        for name in ("heads", "ensemble_size", "norm_pairs"):
            require(getattr(self, name) >= 1, where, f"method.{name}", getattr(self, name), "use a whole number >= 1")
        require(self.calibration_bins >= 2, where, "method.calibration_bins", self.calibration_bins, "use e.g. 10")


@dataclass
class RewardConfig(RunConfig):
    """Reward model (Bradley-Terry) on pairwise preferences: a scalar head on a causal-LM backbone."""

    method: RewardMethodConfig = setting(RewardMethodConfig(), "Reward-model loss, heads and ensemble settings.")

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.method.validate(where)
        require(
            not (self.method.freeze_trunk and self.lora is not None),
            where,
            "method.freeze_trunk",
            True,
            "a frozen trunk trains only the head; remove the lora section or set method.freeze_trunk=false",
        )
