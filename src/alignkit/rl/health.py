"""The PPO health monitor (the course's ``monitor_ppo_health``, made stateful): checks each step's metrics and
says what looks wrong, as warnings in the log and 0/1 ``health/*`` metrics.

Checks (thresholds in ``HealthThresholds``):
- reward spike: the mean reward jumps more than ``reward_spike_sigmas`` running standard deviations above its
  running mean (or exceeds ``reward_max``): possible reward hacking;
- KL high: mean KL per sequence above ``kl_max`` (or ``kl_target_factor`` x the controller's target);
- policy loss out of range: |policy loss| > ``policy_loss_max``;
- value loss out of range: value loss > ``value_loss_max``;
- entropy collapse: mean entropy per token below ``entropy_collapse`` x its first value (mode collapse);
- length explosion: mean completion length above ``length_explosion`` x its first value, or most completions
  truncated when they were not at the start (the share above ``truncated_max`` and ``truncated_rise`` above its
  first value: a policy whose answers already fill the window at step 1 is not exploding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HealthThresholds:
    reward_max: float = 10.0
    reward_spike_sigmas: float = 4.0
    kl_max: float = 10.0
    kl_target_factor: float = 2.0
    policy_loss_max: float = 5.0
    value_loss_max: float = 10.0
    entropy_collapse: float = 0.2
    length_explosion: float = 2.0
    truncated_max: float = 0.5
    truncated_rise: float = 0.25
    warmup: int = 3  # steps before the spike check has a running mean to compare against


@dataclass
class HealthMonitor:
    """Call ``check(metrics)`` once per step; returns ``{"health/<check>": 0|1}`` plus ``health/alarms``.

    Metric names read: ``reward/mean``, ``kl/sequence``, ``loss/policy``, ``loss/value``, ``entropy``,
    ``completion/length``, ``completion/truncated``; missing ones are not checked. ``kl_target``: the adaptive
    controller's target, if any."""

    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    kl_target: float | None = None
    warnings: list[str] = field(default_factory=list)
    _rewards: list[float] = field(default_factory=list)
    _first: dict[str, float] = field(default_factory=dict)

    def check(self, m: dict[str, float]) -> dict[str, float]:
        t, found = self.thresholds, {}
        self.warnings = []

        def flag(name: str, bad: bool, message: str) -> None:
            found[f"health/{name}"] = float(bad)
            if bad:
                self.warnings.append(message)

        if _has(m, "reward/mean"):
            r = m["reward/mean"]
            spike = r > t.reward_max
            if len(self._rewards) >= t.warmup:
                mean = sum(self._rewards) / len(self._rewards)
                std = (sum((x - mean) ** 2 for x in self._rewards) / len(self._rewards)) ** 0.5
                spike = spike or r > mean + t.reward_spike_sigmas * max(std, 1e-3)
            flag("reward_spike", spike, f"reward {r:.3g} jumped above its history: possible reward hacking")
            self._rewards = (self._rewards + [r])[-20:]
        if _has(m, "kl/sequence"):
            kl = m["kl/sequence"]
            limit = min(t.kl_max, t.kl_target_factor * self.kl_target) if self.kl_target else t.kl_max
            flag("kl_high", kl > limit, f"KL {kl:.3g} > {limit:.3g}: the policy is drifting from the reference")
        if _has(m, "loss/policy"):
            v = m["loss/policy"]
            flag("policy_loss", abs(v) > t.policy_loss_max, f"policy loss {v:.3g} out of range: unstable training")
        if _has(m, "loss/value"):
            v = m["loss/value"]
            flag("value_loss", v > t.value_loss_max, f"value loss {v:.3g} > {t.value_loss_max}: the value "
                 "function is not learning")  # fmt: skip
        if _has(m, "entropy"):
            e, first = m["entropy"], self._first.setdefault("entropy", m["entropy"])
            flag("entropy_collapse", e < t.entropy_collapse * first, f"entropy {e:.3g} fell below "
                 f"{t.entropy_collapse:g} x its start ({first:.3g}): mode collapse")  # fmt: skip
        if _has(m, "completion/length"):
            n, first = m["completion/length"], self._first.setdefault("length", m["completion/length"])
            truncated = m.get("completion/truncated", 0.0)
            first_truncated = self._first.setdefault("truncated", truncated)
            bad = n > t.length_explosion * first or truncated > max(t.truncated_max, first_truncated + t.truncated_rise)
            flag("length_explosion", bad, f"completion length {n:.3g} (start {first:.3g}, {truncated:.0%} "
                 "truncated): response-length explosion")  # fmt: skip
        found["health/alarms"] = float(len(self.warnings))
        return found

    def state_dict(self) -> dict:
        return {"rewards": list(self._rewards), "first": dict(self._first)}

    def load_state_dict(self, state: dict) -> None:
        self._rewards, self._first = list(state.get("rewards", [])), dict(state.get("first", {}))


def _has(m: dict, key: str) -> bool:
    return key in m and m[key] is not None and math.isfinite(m[key])
