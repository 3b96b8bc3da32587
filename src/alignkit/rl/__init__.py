"""Reinforcement-learning pieces shared by the online methods: advantages, KL estimators and controllers, health."""

from alignkit.rl.advantages import ADVANTAGES, Moments, gae, group_advantages, moments, rloo_advantages, whiten
from alignkit.rl.health import HealthMonitor, HealthThresholds
from alignkit.rl.kl import ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate

__all__ = [
    "ADVANTAGES",
    "ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "HealthMonitor",
    "HealthThresholds",
    "Moments",
    "gae",
    "group_advantages",
    "kl_estimate",
    "moments",
    "rloo_advantages",
    "whiten",
]
