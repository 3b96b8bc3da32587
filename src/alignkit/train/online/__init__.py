"""The online methods: ``rollout`` (the rollout stage: prompts -> samples -> rewards -> advantages), ``grpo``
(GRPO / RLOO / REINFORCE++), ``ppo``, and ``judged`` (judged samples) with its two methods ``dpo`` and ``kto``."""
