"""Merge a LoRA adapter into its base model and save a plain transformers model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignkit.errors import UserError
from alignkit.models.load import load_model, load_tokenizer
from alignkit.models.save import save_model


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None) -> Path:
    """Base + adapter -> full model in ``out_dir`` (loads with ``AutoModelForCausalLM.from_pretrained``)."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise UserError(
            f"{adapter_dir} is not a LoRA adapter (no adapter_config.json). Fix: pass the 'model' "
            "directory of a LoRA run"
        )
    base = base or json.loads(config.read_text()).get("base_model_name_or_path")
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base, torch.float32, "cpu"), adapter_dir).merge_and_unload()
    tokenizer_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    save_model(model, load_tokenizer(str(tokenizer_src)), out_dir)
    return out_dir
