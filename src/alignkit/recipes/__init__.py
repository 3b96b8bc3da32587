"""Whole runs that compose training, generation and judging: the DPO and GRPO demos (``demo_eval`` measures the DPO
demo against its base), ``compare`` (SFT / DPO / KTO / PPO from one base), ``overopt`` (gold vs proxy reward), and
``retrain`` (served feedback -> a new model -> a judged rollout). Only the CLI imports them."""
