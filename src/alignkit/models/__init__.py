"""Models: loading (embedded default, local dir, hub id), LoRA, merging."""

from alignkit.models.load import (
    apply_lora,
    load_model,
    load_policy,
    load_tokenizer,
    pick_device,
    pick_mixed_precision,
    resolve_model_path,
    trainable_parameters,
)

__all__ = [
    "apply_lora",
    "load_model",
    "load_policy",
    "load_tokenizer",
    "pick_device",
    "pick_mixed_precision",
    "resolve_model_path",
    "trainable_parameters",
]
