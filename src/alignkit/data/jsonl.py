"""The one JSONL reader and writer: one JSON object a line, read with ``file:line`` sources, written atomically."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from alignkit.errors import DataError


def open_text(path: Path):
    """``path`` as UTF-8 text, gunzipped when its name ends with .gz."""
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path, on_bad_line: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, Any]]:
    """``(source, record)`` per non-blank line, source ``path:line``. A bad line raises ``DataError`` naming it, or,
    with ``on_bad_line``, is passed to it as ``(source, what is wrong)`` and skipped; an unreadable file raises."""
    path = Path(path)
    try:
        with open_text(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    if on_bad_line is None:
                        raise DataError(
                            f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno}). "
                            "Fix: each line must be one JSON object"
                        ) from None
                    on_bad_line(f"{path}:{i}", f"not valid JSON ({e.msg})")
                    continue
                yield f"{path}:{i}", record
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e}). Fix: check the file is UTF-8 text (gzip for .gz)") from None


def read_jsonl(path: str | Path) -> list:
    """The records of a JSONL file (e.g. a run's metrics.jsonl), in order."""
    return [record for _, record in iter_jsonl(path)]


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write one JSON object a line, atomically (a temp file in the same directory, then renamed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise DataError(f"{path}: cannot be written ({e}). Fix: choose a writable file path") from None
    return path
