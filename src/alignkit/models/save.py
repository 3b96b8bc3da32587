"""Saving a model directory atomically: weights (or a LoRA adapter), tokenizer and extra files, then one rename."""

from __future__ import annotations

import shutil
from pathlib import Path

from alignkit.errors import UserError
from alignkit.outputs import replace_dir


def save_model(model, tokenizer, out: Path, extra_files: dict[str, str] | None = None) -> None:
    """Final model (or LoRA adapter) + tokenizer (+ ``extra_files`` {name: text}), written atomically to ``out``."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "peft_config"):
        # LoRA adapters only; "auto" would look the base model up on the hub to decide about embeddings.
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a directory; refusing to replace it. Fix: choose a directory path")
    replace_dir(tmp, out)
