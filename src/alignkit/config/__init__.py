"""Typed configs: one dataclass per stage, loaded from YAML plus ``--set key=value`` overrides.

Every field has a help text; values are type-checked and validated on load, and every error names the field
(``train.learning_rate``), the file, and the fix. ``base`` declares, loads and saves configs; ``sections`` holds the
sections every run has (model, lora, data, train); ``offline`` and ``online`` the method configs; ``judge`` checks
what names a judge.
"""

from alignkit.config.base import EMBEDDED_MODEL, from_dict, load_config, require, save_config, setting, to_dict
from alignkit.config.judge import JUDGE_KINDS, check_judge_spec
from alignkit.config.offline import (
    KTOConfig,
    KTOMethodConfig,
    LossDefaults,
    PreferenceConfig,
    PreferenceMethodConfig,
    RewardConfig,
    RewardMethodConfig,
    SFTConfig,
    SFTMethodConfig,
)
from alignkit.config.online import (
    GRPOConfig,
    GRPOMethodConfig,
    JudgedConfig,
    JudgedOnlineConfig,
    OnlineConfig,
    OnlineKTOConfig,
    OnlineKTOMethodConfig,
    OnlinePreferenceConfig,
    OnlinePreferenceMethodConfig,
    PolicyGradientConfig,
    PPOConfig,
    PPOMethodConfig,
    RewardSourcesConfig,
    RolloutConfig,
)
from alignkit.config.sections import DataConfig, LoRAConfig, ModelConfig, RunConfig, TrainConfig

__all__ = [
    "EMBEDDED_MODEL",
    "JUDGE_KINDS",
    "DataConfig",
    "GRPOConfig",
    "GRPOMethodConfig",
    "JudgedConfig",
    "JudgedOnlineConfig",
    "KTOConfig",
    "KTOMethodConfig",
    "LoRAConfig",
    "LossDefaults",
    "ModelConfig",
    "OnlineConfig",
    "OnlineKTOConfig",
    "OnlineKTOMethodConfig",
    "OnlinePreferenceConfig",
    "OnlinePreferenceMethodConfig",
    "PPOConfig",
    "PPOMethodConfig",
    "PolicyGradientConfig",
    "PreferenceConfig",
    "PreferenceMethodConfig",
    "RewardConfig",
    "RewardMethodConfig",
    "RewardSourcesConfig",
    "RolloutConfig",
    "RunConfig",
    "SFTConfig",
    "SFTMethodConfig",
    "TrainConfig",
    "check_judge_spec",
    "from_dict",
    "load_config",
    "require",
    "save_config",
    "setting",
    "to_dict",
]
