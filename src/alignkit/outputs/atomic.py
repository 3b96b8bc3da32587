"""Writes that a crash or Ctrl-C cannot leave half done: a temp file (or directory) beside the target, then one
rename."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` to ``path`` through a temp file in the same directory and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (strict JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """``obj`` as strict JSON (NaN/inf as null; other objects as ``str``), atomically."""
    text = json.dumps(finite(obj), indent=indent, default=str, allow_nan=False, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def replace_dir(tmp: Path, out: Path) -> Path:
    """Put the finished directory ``tmp`` at ``out``: the old ``out`` is moved aside, ``tmp`` renamed, the old one
    removed. A crash in between leaves either the old or the new directory whole."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
