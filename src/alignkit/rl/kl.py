"""KL estimators from sampled tokens, and the controllers that set the KL coefficient.

For a token sampled from pi, with log r = log pi_ref(y) - log pi(y) (Schulman 2020, "Approximating KL
divergence"):
- k1 = -log r: unbiased for KL(pi || pi_ref), high variance, can be negative per sample;
- k2 = (log r)^2 / 2: biased, low variance, always >= 0 (its gradient is the one of the true KL, on policy);
- k3 = (r - 1) - log r: unbiased and always >= 0 (GRPO's choice, DeepSeekMath eq. 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor
ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi, any shape -> same shape."""
    log_ratio = ref_logps - logps  # log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # clamp: exp of a large log-ratio overflows; the estimate is then huge anyway
        return torch.expm1(log_ratio.clamp(max=20.0)) - log_ratio
    raise ValueError(f"KL estimator must be one of {', '.join(ESTIMATORS)}, got {kind!r}")


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences"), sec. 2.2: a proportional
    controller that moves beta so the KL per sequence tracks ``target``.

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon): too much KL raises beta,
    too little lowers it; ``horizon`` (in samples) sets how fast.
    """

    value: float
    target: float
    horizon: float

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
