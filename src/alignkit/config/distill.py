"""The config of on-policy distillation (``alignkit train distill``): a teacher scores the student's own samples."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.config.base import require, setting
from alignkit.config.online import OnlineConfig, RewardSourcesConfig, RolloutConfig
from alignkit.errors import ConfigError


@dataclass
class DistillMethodConfig(RewardSourcesConfig):
    """GKD on the student's samples. Reward functions / a reward model, when given, are only measured (logged as
    reward/mean, pass@1/...), never trained on."""

    teacher: str | None = setting(None, "The teacher: a model name, a model dir or a LoRA adapter dir (alignkit "
                                  "train ...); it must share the student's tokenizer.")  # fmt: skip
    jsd_beta: float = setting(1.0, "Generalized JSD interpolation (GKD): 1 = reverse KL(student || teacher), 0 = "
                              "forward KL(teacher || student), in between the JSD.")  # fmt: skip
    iterations: int = setting(1, "Passes over each rollout's samples.")
    minibatches: int = setting(1, "Optimizer steps per pass.")
    old_logprobs: str = setting("recompute", "Unused by the distillation loss (kept for the rollout stage).",
                                ("recompute", "sampler"))  # fmt: skip

    def validate(self, where: str) -> None:
        require(0 <= self.jsd_beta <= 1, where, "method.jsd_beta", self.jsd_beta, "use a value in [0, 1]")
        for name in ("iterations", "minibatches"):
            require(getattr(self, name) >= 1, where, f"method.{name}", getattr(self, name), "use a whole number >= 1")
        require(self.reward_workers >= 0, where, "method.reward_workers", self.reward_workers, "use 0 or more")


@dataclass
class DistillConfig(OnlineConfig):
    """On-policy distillation (GKD): prompt-only data, the student samples, the teacher scores every position."""

    rollout: RolloutConfig = setting(RolloutConfig(samples_per_prompt=2), "How prompts become the student's samples.")
    method: DistillMethodConfig = setting(DistillMethodConfig(), "The teacher and the divergence.")

    def check_reward(self, where: str) -> None:
        if not self.method.teacher:
            raise ConfigError(f"{where}: method.teacher is not set. Fix: name the teacher, e.g. "
                              "--set method.teacher=runs/demo-grpo/model")  # fmt: skip
