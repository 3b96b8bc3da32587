"""Serving and the feedback loop: an OpenAI-compatible server, a durable store, A/B rollout, monitoring, export
back into training. Module map: docs/serving_design.md."""
