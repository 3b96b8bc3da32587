"""Reward models: Bradley-Terry training (``alignkit train rm``), scoring, ensembles, best-of-N."""

from alignkit.reward_model.aggregate import AGGREGATIONS, aggregate, uncertainty
from alignkit.reward_model.scoring import RewardModel

__all__ = ["AGGREGATIONS", "RewardModel", "aggregate", "uncertainty"]
