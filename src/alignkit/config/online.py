"""Typed configs of the online methods (GRPO, RLOO, PPO): the rollout (how prompts become scored samples) and each
method's loss settings. Loading, validation style and ``--set`` overrides are those of ``alignkit.config``.

Batch shape, explicitly: a step takes ``rollout.prompts_per_step`` prompts (all processes together) and samples
``rollout.samples_per_prompt`` completions for each; the optimizer then takes ``method.iterations`` passes over
that experience, each in ``method.minibatches`` optimizer steps. ``train.batch_size`` is only the number of
completions per forward (memory); the accumulation follows from the rest and is printed at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from alignkit.config.base import require, setting
from alignkit.config.judge import check_judge_spec
from alignkit.config.offline import LossDefaults
from alignkit.config.sections import RunConfig
from alignkit.errors import ConfigError
from alignkit.losses import LOSSES
from alignkit.rl.advantages import ADVANTAGES
from alignkit.rl.kl import ESTIMATORS


@dataclass
class RolloutConfig:
    prompts_per_step: int = setting(
        8, "Prompts per step, over all processes (each gets samples_per_prompt completions)."
    )
    samples_per_prompt: int = setting(8, "Completions sampled per prompt (the group size G).")
    max_new_tokens: int = setting(128, "Tokens generated at most per completion.")
    temperature: float = setting(1.0, "Sampling temperature (the trainer scores the same tempered distribution).")
    top_p: float = setting(1.0, "Nucleus sampling; 1 = off (keep off for unbiased on-policy log-probs).")
    top_k: int = setting(0, "Top-k sampling; 0 = off.")
    min_p: float = setting(0.0, "Min-p sampling; 0 = off.")
    stop: list = setting([], "Stop strings: a completion ends after the token that completes one.")
    chat: bool = setting(True, "Text prompts become one user message through the tokenizer's chat template.")
    max_rows: int = setting(64, "Rows the sampler decodes together (prompts x samples).")
    backend: str = setting("alignkit", "Sampler: alignkit (live model, any device) or vllm (GPU, when installed).",
                           ("alignkit", "vllm"))  # fmt: skip
    eval_samples: int = setting(1, "Completions per eval prompt (k of pass@k).")
    eval_temperature: float = setting(0.0, "Eval sampling temperature; 0 = greedy.")
    environment: str | None = setting(
        None,
        "Multi-turn episodes: a built-in environment (calculator, python, arithmetic_steps) or module:Class / "
        "file.py:Class; None = single-turn.",
    )
    environment_args: dict = setting(
        {},
        "Keyword arguments of the environment (built-ins: tool_timeout, tool_workers, answer_field, "
        "instruction, tool_bonus, demonstrations).",
    )
    max_turns: int = setting(4, "Environment episodes: model turns at most (max_new_tokens bounds all their tokens "
                             "and the observations').")  # fmt: skip
    max_tokens_per_turn: int = setting(0, "Environment episodes: tokens per model turn; 0 = max_new_tokens.")

    def validate(self, where: str) -> None:
        for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "max_rows", "eval_samples"):
            require(getattr(self, name) >= 1, where, f"rollout.{name}", getattr(self, name), "use a whole number >= 1")
        require(self.temperature > 0, where, "rollout.temperature", self.temperature,
                "use a positive temperature for training samples (eval_temperature may be 0)")  # fmt: skip
        require(self.eval_temperature >= 0, where, "rollout.eval_temperature", self.eval_temperature, "use >= 0")
        require(0 < self.top_p <= 1, where, "rollout.top_p", self.top_p, "use a value in (0, 1]")
        require(self.top_k >= 0, where, "rollout.top_k", self.top_k, "use 0 (off) or a positive number")
        require(0 <= self.min_p < 1, where, "rollout.min_p", self.min_p, "use a value in [0, 1)")
        require(all(isinstance(s, str) and s for s in self.stop), where, "rollout.stop", self.stop,
                "use a list of non-empty strings")  # fmt: skip
        require(self.max_turns >= 1, where, "rollout.max_turns", self.max_turns, "use a whole number >= 1")
        require(self.max_tokens_per_turn >= 0, where, "rollout.max_tokens_per_turn", self.max_tokens_per_turn,
                "use 0 (= max_new_tokens) or a positive number")  # fmt: skip
        require(isinstance(self.environment_args, dict), where, "rollout.environment_args", self.environment_args,
                "use a mapping of keyword arguments")  # fmt: skip
        require(self.environment is None or (isinstance(self.environment, str) and self.environment.strip()), where,
                "rollout.environment", self.environment, "use a built-in name or module:Class")  # fmt: skip


@dataclass
class RewardSourcesConfig:
    """Where the online methods' rewards come from: reward functions and/or a reward model (``RewardSources``)."""

    rewards: list = setting([], "Reward functions: built-in names (math, math_format, code) or module:function, or "
                            "{function, weight, timeout, name} mappings; several are summed by weight.")  # fmt: skip
    reward_model: str | None = setting(None, "A reward model or ensemble dir (alignkit train rm) scoring completions.")
    reward_model_weight: float = setting(1.0, "Weight of the reward model's (normalized) score in the reward sum.")
    reward_model_aggregate: str = setting("mean", "How an ensemble's members combine.",
                                          ("mean", "min", "percentile", "mean_minus_std"))  # fmt: skip
    gold_reward_model: str | None = setting(
        None,
        "A reward model or ensemble dir scoring held-out samples at eval only; "
        "never trained against. eval/gold/reward (mean normalized score, ensemble "
        "members averaged) is then an early-stopping metric.",
    )
    reward_workers: int = setting(2, "Worker processes running reward functions (each call with its timeout); 0 = "
                                  "in the training process, no timeouts.")  # fmt: skip


@dataclass
class PolicyGradientConfig(RewardSourcesConfig):
    """What GRPO, RLOO and PPO share: rewards, the reference/KL, the clipped objective and the update schedule."""

    beta: float = setting(0.0, "KL coefficient toward the reference (initial policy); 0 = no reference is loaded.")
    kl_estimator: str = setting("k3", "Per-token KL estimator (Schulman 2020).", ESTIMATORS)
    ref_model: str | None = setting(None, "A different reference model; None = the initial policy.")
    policy_loss: str = setting("ppo", "The policy objective (losses.POLICY_LOSSES): ppo (token ratio, clipped; GRPO, "
                               "DAPO), gspo (sequence ratio; use clip ranges ~3e-4 / 4e-4 and sequence_mean), or "
                               "cispo (clipped stop-gradient weight).", ("ppo", "gspo", "cispo"))  # fmt: skip
    clip_low: float = setting(0.2, "Lower clip range eps_low of the importance ratio (1 - eps_low).")
    clip_high: float = setting(0.2, "Upper clip range eps_high (1 + eps_high); DAPO's clip-higher uses 0.28.")
    iterations: int = setting(1, "Passes over each rollout's experience (GRPO's mu, PPO's epochs).")
    minibatches: int = setting(1, "Optimizer steps per pass; the experience is split into this many minibatches.")
    rollout_correction: str = setting(
        "none",
        "Correct the sampler/trainer log-prob gap: truncate (TIS: weight min(rho, threshold)) or mask (MIS: "
        "drop tokens/sequences with rho outside [1/threshold, threshold]); rho = pi_trainer / pi_sampler.",
        ("none", "truncate", "mask"),
    )
    rollout_correction_level: str = setting("token", "rho per token, or per sequence (product over its tokens).",
                                            ("token", "sequence"))  # fmt: skip
    rollout_correction_threshold: float = setting(2.0, "The threshold C of the rollout correction (> 1).")
    old_logprobs: str = setting("recompute", "pi_old for the importance ratio when iterations x minibatches > 1: "
                                "recompute (a forward after sampling) or sampler (the sampler's own log-probs).",
                                ("recompute", "sampler"))  # fmt: skip

    def validate(self, where: str) -> None:
        require(self.beta >= 0, where, "method.beta", self.beta, "use 0 (no KL term) or a positive coefficient")
        for name in ("clip_low", "clip_high"):
            require(0 < getattr(self, name) < 10, where, f"method.{name}", getattr(self, name), "use e.g. 0.2")
        require(self.clip_low < 1 or (self.policy_loss == "cispo" and self.clip_low == 1), where, "method.clip_low",
                self.clip_low, "use a value below 1, e.g. 0.2 (cispo: 1 = no lower bound)")  # fmt: skip
        require(self.rollout_correction_threshold > 1, where, "method.rollout_correction_threshold",
                self.rollout_correction_threshold, "use a value above 1, e.g. 2")  # fmt: skip
        for name in ("iterations", "minibatches"):
            require(getattr(self, name) >= 1, where, f"method.{name}", getattr(self, name), "use a whole number >= 1")
        require(self.reward_workers >= 0, where, "method.reward_workers", self.reward_workers, "use 0 or more")
        if self.ref_model and self.beta == 0:
            raise ConfigError(f"{where}: method.ref_model is set but method.beta is 0, so no reference is used. "
                              "Fix: set method.beta > 0, or remove method.ref_model")  # fmt: skip


# DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"): clip-higher (eps_low
# 0.2, eps_high 0.28), token-level loss aggregation, dynamic sampling (groups without reward variance replaced),
# overlong reward shaping (the soft penalty over the last overlong_buffer tokens), and no KL term.
DAPO = {
    "clip_low": 0.2, "clip_high": 0.28, "loss_aggregation": "token_mean", "dynamic_sampling": True,
    "overlong": "penalty", "beta": 0.0, "scale_rewards": "group", "policy_loss": "ppo",
}  # fmt: skip


@dataclass
class GRPOMethodConfig(PolicyGradientConfig):
    PRESETS: ClassVar[dict] = {"dapo": DAPO}
    advantage: str | None = setting(None, "grpo (group-relative), rloo (leave-one-out) or reinforce_pp (group mean, "
                                    "then whitened over the batch); None = the command's (train grpo / train rloo).",
                                    (*ADVANTAGES, None))  # fmt: skip
    scale_rewards: str = setting("group", "GRPO: divide by the group's std, the batch's std, or none (Dr. GRPO).",
                                 ("group", "batch", "none"))  # fmt: skip
    kl_in: str = setting(
        "loss",
        "Where the KL term goes (beta > 0): added to the loss per token (GRPO), or "
        "subtracted from the reward per sequence (RLOO, REINFORCE++).",
        ("loss", "reward"),
    )
    loss_aggregation: str = setting(
        "token_mean",
        "token_mean (all tokens of a step count alike; DAPO), "
        "sequence_mean (mean of per-completion means; GRPO paper), or constant (token sum "
        "/ max_new_tokens; Dr. GRPO).",
        ("token_mean", "sequence_mean", "constant"),
    )
    dynamic_sampling: bool = setting(False, "DAPO: drop groups whose rewards are all equal (no signal) and sample "
                                     "other prompts in their place, up to max_resample_rounds.")  # fmt: skip
    max_resample_rounds: int = setting(3, "Dynamic sampling: refill rounds per step before training on what there is.")
    overlong: str = setting("none", "Completions cut at max_new_tokens: none, mask (no loss; DAPO), or penalty "
                            "(DAPO's soft length penalty over the last overlong_buffer tokens).",
                            ("none", "mask", "penalty"))  # fmt: skip
    overlong_buffer: int = setting(32, "Penalty: tokens before max_new_tokens where the penalty ramps from 0 to -1.")
    overlong_penalty: float = setting(1.0, "Penalty: the reward subtracted at max_new_tokens.")
    preset: str | None = setting(
        None,
        "Defaults under the settings given: dapo (clip-higher, token_mean, dynamic sampling, overlong "
        "penalty, beta 0).",
        (None, "dapo"),
    )

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.max_resample_rounds >= 0, where, "method.max_resample_rounds", self.max_resample_rounds, ">= 0")
        require(self.overlong_buffer >= 1, where, "method.overlong_buffer", self.overlong_buffer, "use >= 1")
        require(self.policy_loss != "gspo" or self.loss_aggregation == "sequence_mean", where,
                "method.loss_aggregation", self.loss_aggregation,
                "GSPO averages each completion's tokens: set method.loss_aggregation: sequence_mean")  # fmt: skip

    @property
    def resolved_advantage(self) -> str:
        return self.advantage or "grpo"


@dataclass
class PPOMethodConfig(PolicyGradientConfig):
    beta: float = setting(0.05, "Initial KL coefficient of the per-token KL penalty in the reward (init_kl_coef).")
    kl_target: float | None = setting(6.0, "Adaptive KL controller (Ziegler et al. 2019): the KL per sequence to hold; "
                                      "None = a fixed coefficient beta.")  # fmt: skip
    kl_horizon: float = setting(10000.0, "Adaptive controller horizon in samples: how fast beta moves.")
    value: str = setting("separate", "Value function: a separate model (initialized from value_model) or a linear head "
                         "on the policy's trunk (shared).", ("separate", "shared"))  # fmt: skip
    value_model: str | None = setting(
        None,
        "Where the separate value model starts: a reward model dir (alignkit train rm) or a causal LM; "
        "None = method.reward_model if set, else the policy's model.",
    )
    vf_coef: float = setting(0.1, "Weight of the value loss.")
    value_clip: float | None = setting(0.2, "Clip range of the value around its rollout-time estimate; None = no clip.")
    gamma: float = setting(1.0, "Discount of GAE.")
    lam: float = setting(0.95, "GAE lambda.")
    whiten_advantages: bool = setting(True, "Normalize advantages to mean 0, std 1 over the step's tokens.")
    iterations: int = setting(4, "PPO epochs: passes over each rollout.")
    minibatches: int = setting(2, "Optimizer steps per pass.")

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.kl_target is None or self.kl_target > 0, where, "method.kl_target", self.kl_target,
                "use a positive KL per sequence, e.g. 6, or null for a fixed coefficient")  # fmt: skip
        require(self.kl_horizon > 0, where, "method.kl_horizon", self.kl_horizon, "use e.g. 10000")
        require(self.vf_coef >= 0, where, "method.vf_coef", self.vf_coef, "use e.g. 0.1")
        require(self.policy_loss != "gspo", where, "method.policy_loss", self.policy_loss,
                "use ppo or cispo: GSPO needs one advantage per sequence, and PPO's are per token (GAE)")  # fmt: skip
        require(self.value_clip is None or self.value_clip > 0, where, "method.value_clip", self.value_clip,
                "use e.g. 0.2, or null")  # fmt: skip
        require(0 < self.gamma <= 1, where, "method.gamma", self.gamma, "use a value in (0, 1]")
        require(0 <= self.lam <= 1, where, "method.lam", self.lam, "use a value in [0, 1]")
        if self.value == "shared" and self.value_model:
            raise ConfigError(f"{where}: method.value_model is set but method.value is shared (a head on the policy). "
                              "Fix: set method.value=separate, or remove method.value_model")  # fmt: skip


@dataclass
class OnlineConfig(RunConfig):
    """Shared by the online methods: a ``rollout`` section next to model, lora, data, train and method."""

    rollout: RolloutConfig = setting(RolloutConfig(), "How prompts become sampled completions each step.")

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.rollout.validate(where)
        self.method.validate(where)
        self.check_reward(where)
        require(self.train.grad_accum == 1, where, "train.grad_accum", self.train.grad_accum,
                "online methods derive accumulation from rollout.prompts_per_step x rollout.samples_per_prompt "
                "/ method.minibatches / (processes x train.batch_size); leave train.grad_accum at 1")  # fmt: skip
        limit = self.data.max_length - self.rollout.max_new_tokens
        require(limit >= 8, where, "data.max_length", self.data.max_length,
                f"leave room for prompts: data.max_length must exceed rollout.max_new_tokens "
                f"({self.rollout.max_new_tokens}) by at least 8")  # fmt: skip

    def check_reward(self, where: str) -> None:
        """Something must score the samples: reward functions, a reward model and/or an environment."""
        if not self.method.rewards and not self.method.reward_model and not self.rollout.environment:
            raise ConfigError(f"{where}: no reward: method.rewards is empty and method.reward_model is not set. "
                              "Fix: e.g. method.rewards=[math], or method.reward_model=runs/rm/model")  # fmt: skip

    @property
    def max_prompt_length(self) -> int:
        return self.data.max_prompt_length or self.data.max_length - self.rollout.max_new_tokens


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO / RLOO / REINFORCE++ with verifiable rewards or a reward model: prompt-only data."""

    method: GRPOMethodConfig = setting(GRPOMethodConfig(), "Rewards, advantages, clipping, KL and update schedule.")


@dataclass
class PPOConfig(OnlineConfig):
    """PPO-RLHF: a reward model (or reward functions), a value function, GAE and an adaptive KL penalty."""

    rollout: RolloutConfig = setting(RolloutConfig(samples_per_prompt=1), "How prompts become sampled completions.")
    method: PPOMethodConfig = setting(
        PPOMethodConfig(), "Rewards, value function, GAE, clipping, KL control, schedule."
    )


@dataclass
class JudgedOnlineConfig(RewardSourcesConfig):
    """What online DPO and online KTO share: the judge, the iteration schedule, replay, and rewards.

    Every ``iteration_steps`` steps the current policy samples ``rollout.samples_per_prompt`` responses for every
    prompt of the next ``iteration_steps`` steps; a judge labels them (pairs for DPO, good/bad for KTO); each step
    then trains on its prompts' labelled samples mixed with those of earlier iterations (and ``replay_data``) at
    ``replay_ratio``. ``iteration_steps: 1`` is fully online (Guo et al. 2024, OAIF); more is iterative (Xu et al.
    2023; Yuan et al. 2024). Without ``judge``, the rewards judge (best vs worst sample; good = above threshold);
    with one, the rewards only give eval metrics (pass@1)."""

    ref_model: str | None = setting(None, "A different reference model; None = the initial policy.")
    judge: Any = setting(None, "A judge (alignkit.judges.load_judge spec: llm:MODEL, reward_model:DIR, verifier:math, "
                         "or a mapping with kind); None = judge by method.rewards / method.reward_model.")  # fmt: skip
    iteration_steps: int = setting(1, "Steps per iteration: the policy samples the data of this many steps at once; "
                                   "1 = fully online.")  # fmt: skip
    replay_ratio: float = setting(0.5, "Share of each step's examples drawn from earlier iterations (and replay_data); "
                                  "0 = only fresh ones. The spec's iterative DPO mixes old and new 50/50.")  # fmt: skip
    replay_size: int = setting(4096, "Examples kept for replay; the oldest leave first.")
    replay_data: str | None = setting(None, "Offline data seeding the replay pool (DPO: pairs; KTO: binary feedback).")
    iterations: int = setting(1, "Passes over each step's examples.")
    minibatches: int = setting(1, "Optimizer steps per pass.")

    compares_pairs: ClassVar[bool] = False  # labels pairs of samples (an LLM judge then compares exactly two)

    def samples_needed(self) -> int:
        """Samples per prompt the labelling needs."""
        return 1

    def validate(self, where: str) -> None:
        require(self.iteration_steps >= 1, where, "method.iteration_steps", self.iteration_steps, "use 1 or more")
        require(0 <= self.replay_ratio < 1, where, "method.replay_ratio", self.replay_ratio, "use a value in [0, 1)")
        require(self.replay_size >= 1, where, "method.replay_size", self.replay_size, "use 1 or more")
        for name in ("iterations", "minibatches"):
            require(getattr(self, name) >= 1, where, f"method.{name}", getattr(self, name), "use a whole number >= 1")
        require(self.reward_workers >= 0, where, "method.reward_workers", self.reward_workers, "use 0 or more")


@dataclass
class OnlinePreferenceMethodConfig(JudgedOnlineConfig, LossDefaults):
    """Online / iterative DPO and the rest of the DPO family: a pair per prompt from its samples."""

    loss: str = setting("dpo", "Preference loss of the DPO family.", tuple(LOSSES))
    beta: float | None = setting(
        None, "Loss temperature; None = the loss's default (dpo/ipo/hinge/robust 0.1, simpo 2)."
    )
    label_smoothing: float = setting(0.0, "Assumed label-noise rate for dpo (cDPO) and robust; in [0, 0.5).")
    gamma: float = setting(1.0, "SimPO target reward margin.")
    sft_weight: float | None = setting(None, "Weight of an NLL term on chosen; None = the loss's default (orpo 1).")
    both_orders: bool = setting(True, "Ask an order-sensitive judge (LLM) in both orders (position bias); orders that "
                                "disagree make no pair (counted in judge/inconsistent).")  # fmt: skip
    margin: float = setting(0.0, "Rewards: best and worst must differ by more than this to make a pair.")

    compares_pairs: ClassVar[bool] = True

    def samples_needed(self) -> int:
        return 2  # a pair

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.beta is None or self.beta > 0, where, "method.beta", self.beta, "use a positive value, e.g. 0.1")
        require(0 <= self.label_smoothing < 0.5, where, "method.label_smoothing", self.label_smoothing,
                "use a value in [0, 0.5)")  # fmt: skip
        if self.loss == "robust":
            require(self.label_smoothing > 0, where, "method.label_smoothing", self.label_smoothing,
                    "robust DPO needs the assumed noise rate, e.g. 0.1")  # fmt: skip
        require(self.sft_weight is None or self.sft_weight >= 0, where, "method.sft_weight", self.sft_weight, ">= 0")
        require(self.margin >= 0, where, "method.margin", self.margin, "use 0 or a positive reward difference")
        if not LOSSES[self.loss].needs_reference and self.ref_model:
            raise ConfigError(f"{where}: method.ref_model is set but loss '{self.loss}' uses no reference model. "
                              "Fix: remove method.ref_model, or use a loss with a reference (dpo, ipo)")  # fmt: skip


@dataclass
class OnlineKTOMethodConfig(JudgedOnlineConfig):
    """Online KTO: every sample labelled good or bad by the judge (Ethayarajh et al. 2024's loss)."""

    beta: float = setting(0.1, "KTO temperature beta.")
    desirable_weight: float = setting(1.0, "lambda_D, weight of desirable samples.")
    undesirable_weight: float = setting(1.0, "lambda_U, weight of undesirable samples.")
    label_by: str = setting("threshold", "A sample is desirable when its score exceeds method.threshold, or exceeds "
                            "the mean score of its prompt's samples (group_mean; ties with the mean are left out).",
                            ("threshold", "group_mean"))  # fmt: skip
    threshold: float = setting(
        0.5,
        "label_by threshold: the score above which a sample is desirable (a verifier's 1/0: "
        "0.5; a normalized reward model: 0).",
    )

    def samples_needed(self) -> int:
        return 2 if self.label_by == "group_mean" else 1  # a group mean needs two

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.beta > 0, where, "method.beta", self.beta, "use a positive value, e.g. 0.1")
        for name in ("desirable_weight", "undesirable_weight"):
            require(getattr(self, name) > 0, where, f"method.{name}", getattr(self, name), "use a positive weight")


@dataclass
class JudgedConfig(OnlineConfig):
    """Online / iterative preference optimization: prompt-only data, samples labelled by a judge in the loop."""

    rollout: RolloutConfig = setting(RolloutConfig(samples_per_prompt=2), "How prompts become sampled completions.")
    method: JudgedOnlineConfig = setting(JudgedOnlineConfig(), "Judge, iterations, replay.")

    def validate(self, where: str = "config") -> None:
        judge, g = self.method.judge, self.rollout.samples_per_prompt
        if judge is None and not self.method.rewards and not self.method.reward_model:
            raise ConfigError(f"{where}: no judge: method.judge, method.rewards and method.reward_model are all "
                              "unset. Fix: e.g. method.judge=llm:smollm2-135m-instruct, or "
                              "method.rewards=[math]")  # fmt: skip
        if self.method.samples_needed() > 1:
            require(g >= 2, where, "rollout.samples_per_prompt", g,
                    "a pair (or a group mean) needs at least 2 samples per prompt")  # fmt: skip
        if judge is not None:
            kind = check_judge_spec(judge, "method.judge", where)["kind"]
            if self.method.compares_pairs and kind == "llm":
                require(g == 2, where, "rollout.samples_per_prompt", g,
                        "an LLM judge compares two responses: use 2 samples per prompt")  # fmt: skip
        super().validate(where)

    def check_reward(self, where: str) -> None:
        pass  # a judge, reward functions or a reward model: checked above


@dataclass
class OnlinePreferenceConfig(JudgedConfig):
    """Online / iterative DPO (and the DPO family): prompt-only data, a pair per prompt made by a judge."""

    method: OnlinePreferenceMethodConfig = setting(OnlinePreferenceMethodConfig(), "Loss, judge, iterations, replay.")


@dataclass
class OnlineKTOConfig(JudgedConfig):
    """Online KTO: prompt-only data, every sample labelled good/bad by a judge in the loop."""

    method: OnlineKTOMethodConfig = setting(OnlineKTOMethodConfig(), "KTO loss, judge, labelling, iterations, replay.")
