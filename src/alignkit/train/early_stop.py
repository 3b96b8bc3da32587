"""Early stopping on an eval metric (a gold metric, ideally), shared by every trainer through ``train.loop.fit``.

The rule sees one value per evaluation: ``update(step, value)`` says whether it is a new best (better than the best
so far by more than ``min_delta``) and whether to stop (``patience`` evaluations in a row without a new best). Its
state is four numbers that the loop keeps in ``TrainState`` (so a checkpoint holds them and a resume continues
exactly); pure Python, no torch.

The metric to watch is the point: a proxy (the reward trained against, the training loss) can keep rising while a
gold metric (a held-out reward model never trained against, accuracy on gold-labeled pairs) peaks and falls. The
rule stops there, and with ``train.keep_best`` the loop keeps the weights of the best evaluation in ``best/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from alignkit.errors import UserError

MODES = ("auto", "max", "min")
MINIMIZED = ("loss", "nll", "kl")  # mode auto: a name containing one of these is minimized, anything else maximized


def higher_is_better(metric: str, mode: str = "auto") -> bool:
    """Direction of ``metric``: ``max``/``min`` as given; ``auto`` minimizes names containing loss, nll or kl."""
    if mode == "auto":
        return not any(w in metric for w in MINIMIZED)
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    return mode == "max"


@dataclass(frozen=True)
class Decision:
    """What one evaluation means: a new best (save it), and whether to stop training now."""

    step: int
    value: float
    improved: bool
    stop: bool
    best_step: int | None
    best_value: float | None


class EarlyStopping:
    """Track the best value of ``metric`` over evaluations; stop after ``patience`` evaluations without a new best.

    ``patience=None`` only tracks the best (never stops). A new best must beat the previous best by more than
    ``min_delta`` (>= 0) in the metric's direction (``mode``: max, min, or auto = by name). The first finite
    value is always a new best; a NaN never is.
    """

    def __init__(self, metric: str = "eval/loss", patience: int | None = None, min_delta: float = 0.0, mode="auto"):
        if patience is not None and patience < 1:
            raise ValueError(f"patience {patience}: use a whole number >= 1, or None")
        if not min_delta >= 0:
            raise ValueError(f"min_delta {min_delta}: use a value >= 0")
        self.metric, self.patience, self.min_delta, self.mode = metric, patience, float(min_delta), mode
        self.maximize = higher_is_better(metric, mode)
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.stopped = False

    def is_improvement(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        if self.maximize:
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def value_of(self, metrics: dict[str, float]) -> float:
        """The watched metric out of an evaluation's metrics; a clear error naming the field when it is missing."""
        if self.metric not in metrics:
            raise UserError(
                f"train.early_stopping_metric '{self.metric}' is not an eval metric. "
                f"Fix: use one of {', '.join(sorted(metrics))}"
            )
        return float(metrics[self.metric])

    def update(self, step: int, value: float) -> Decision:
        """Record the evaluation at ``step``; returns whether it is a new best and whether to stop."""
        improved = self.is_improvement(value)
        if improved:
            self.best_value, self.best_step, self.evals_without_improvement = float(value), step, 0
        else:
            self.evals_without_improvement += 1
            if self.patience is not None and self.evals_without_improvement >= self.patience:
                self.stopped = True
        return Decision(step, float(value), improved, self.stopped, self.best_step, self.best_value)

    def message(self, step: int) -> str:
        """The log line when the rule fires."""
        best = "none" if self.best_value is None else f"{self.best_value:.4g} at step {self.best_step}"
        return (
            f"early stopping at step {step}: {self.metric} has not improved for {self.patience} evaluation(s) "
            f"(best {best})"
        )

    # ---- state: the names are TrainState's fields, so the loop's checkpoints keep it (older ones lack best_step)
    def state_dict(self) -> dict:
        return {
            "best_metric": self.best_value,
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
            "stopped_early": self.stopped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_value = state.get("best_metric")
        self.best_step = state.get("best_step")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.stopped = bool(state.get("stopped_early", False))
