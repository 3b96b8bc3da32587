"""Reward sources of the online methods: reward functions (``alignkit.rewards``, in worker processes with timeouts)
and/or a reward model, summed by weight into one reward per completion."""

from __future__ import annotations

from alignkit.data.formats import Content


class RewardSources:
    """Rewards of completions: reward functions (``alignkit.rewards``, in worker processes with timeouts) and/or a
    reward model, summed by weight. A sample whose reward function had an infrastructure error (timeout, crash) is
    masked (None), as is one that no source scored."""

    def __init__(self, mc, device, log=print):
        from alignkit.rewards import RewardRunner, parse_reward_specs

        self.runner = (
            RewardRunner(parse_reward_specs(mc.rewards, "method.rewards"), mc.reward_workers) if mc.rewards else None
        )
        self.rm, self.rm_weight, self.rm_how = None, mc.reward_model_weight, mc.reward_model_aggregate
        if mc.reward_model:
            from alignkit.reward_model import RewardModel

            self.rm = RewardModel.load(mc.reward_model, device=str(device.type))
        self.log = log

    def __call__(self, prompts: list[Content], completions: list[str], columns: dict[str, list]):
        """(rewards: list[float | None], metrics: {name: float}, per_function: {name: list})"""
        n = len(prompts)
        total: list[float | None] = [None] * n
        metrics: dict[str, float] = {}
        per_function: dict[str, list] = {}
        infra = [False] * n
        if self.runner is not None:
            result = self.runner(prompts, completions, columns)
            metrics.update(result.metrics())
            for problem in result.problems():
                self.log(f"warning: {problem}")
            per_function = result.per_function
            for name, values in result.per_function.items():
                weight = next(s.weight for s in self.runner.specs if s.name == name)
                for i, (v, status) in enumerate(zip(values, result.status[name])):
                    if status in ("timeout", "error"):
                        infra[i] = True
                    elif v is not None:
                        total[i] = (total[i] or 0.0) + weight * v
        if self.rm is not None:
            scores = self.rm.reward(prompts, completions, self.rm_how)[0].tolist()
            per_function["reward_model"] = scores
            total = [(t or 0.0) + self.rm_weight * s for t, s in zip(total, scores)]
        return [None if bad else t for t, bad in zip(total, infra)], metrics, per_function

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
