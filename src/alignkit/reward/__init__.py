"""Deprecated alias of ``alignkit.reward_model`` (its name before 0.2, when ``reward`` and ``rewards`` read alike).
``from alignkit.reward import RewardModel`` keeps working, with a ``DeprecationWarning``; the alias goes in 0.3."""

import warnings

from alignkit.reward_model import AGGREGATIONS, RewardModel, aggregate, uncertainty

__all__ = ["AGGREGATIONS", "RewardModel", "aggregate", "uncertainty"]

warnings.warn(
    "alignkit.reward is renamed alignkit.reward_model; import from there (the alias goes in 0.3)",
    DeprecationWarning,
    stacklevel=2,
)
