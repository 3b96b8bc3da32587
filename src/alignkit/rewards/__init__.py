"""Rewards for online RL: the reward-function contract (``functions``), the runner (``runner``), and verifiers
(``math``, ``code``).

See ``alignkit.rewards.functions`` for the contract every reward function follows.
"""

from alignkit.rewards.functions import BUILTINS, RewardSpec, load_reward_function, parse_reward_specs
from alignkit.rewards.runner import FunctionStats, RewardResult, RewardRunner
from alignkit.rewards.verifiers.math import answers_match, extract_answer, math_format_reward, math_reward

__all__ = [
    "BUILTINS",
    "FunctionStats",
    "RewardResult",
    "RewardRunner",
    "RewardSpec",
    "answers_match",
    "extract_answer",
    "load_reward_function",
    "math_format_reward",
    "math_reward",
    "parse_reward_specs",
]
