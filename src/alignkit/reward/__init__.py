"""Reward models: Bradley-Terry training (``alignkit train rm``), scoring, ensembles, best-of-N."""

from alignkit.reward.aggregate import AGGREGATIONS, aggregate, uncertainty
from alignkit.reward.scoring import RewardModel

__all__ = ["AGGREGATIONS", "RewardModel", "aggregate", "uncertainty"]
