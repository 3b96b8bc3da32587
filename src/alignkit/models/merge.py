"""Merge a LoRA adapter into its base model and save a plain transformers model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignkit.errors import UserError
from alignkit.models.load import check_model_source, load_model, load_tokenizer
from alignkit.models.save import save_model
from alignkit.outputs import OWNER_FILE, check_output_dir


def merge_adapter(
    adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, overwrite: bool = False
) -> Path:
    """Base + adapter -> full model in ``out_dir`` (loads with ``AutoModelForCausalLM.from_pretrained``).

    Checked before anything loads: the adapter, its base, and ``out_dir``, which may not hold the adapter (or the
    base) and, unless ``overwrite``, must be new, empty or an earlier merge. Written to a temp dir, then renamed."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise UserError(f"adapter {adapter_dir}: no such directory. Fix: pass the 'model' directory of a LoRA run")
    if not config.is_file():
        raise UserError(
            f"{adapter_dir} is not a LoRA adapter (no adapter_config.json). Fix: pass the 'model' "
            "directory of a LoRA run"
        )
    if base:
        check_model_source(base, "--base")
    else:
        check_model_source(str(adapter_dir), "adapter")
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    local_base = [base] if base and Path(base).exists() else []
    check_output_dir(out_dir, overwrite=overwrite, inputs=[adapter_dir, *local_base], owner="merge")
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base, torch.float32, "cpu"), adapter_dir).merge_and_unload()
    tokenizer_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    save_model(model, load_tokenizer(str(tokenizer_src)), out_dir, {OWNER_FILE: json.dumps({"command": "merge"})})
    return out_dir
