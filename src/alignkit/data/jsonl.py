"""The one JSONL reader and writer: one JSON object a line, read with ``file:line`` sources, written atomically.

Text files are read as UTF-8; a leading UTF-8 BOM (as Windows tools write) is dropped. Anything that goes wrong
while reading (UTF-16 text, bytes that are not UTF-8, a broken gzip stream, nesting too deep to parse) becomes one
``DataError`` naming the file, the line where it can, and the fix.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from alignkit.errors import DataError

# what reading a text file can raise besides DataError: the OS, a broken gzip stream, bytes that are not UTF-8
READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE, whose BOM it starts with
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a \uD800-\uDFFF escape: maybe half of a surrogate pair
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # left in decoded text only when it was not part of a pair


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if _is_gz(path) else open(path, "rb")


def _wide_encoding(head: bytes) -> str | None:
    """ "UTF-16"/"UTF-32" when the first bytes show such text (by its BOM, or ASCII interleaved with NULs)."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return name
    if len(head) >= 4 and ((head[0] and not head[1] and not head[3]) or (not head[0] and head[1] and not head[2])):
        return "UTF-16"
    return None


def open_text(path: Path, newline: str | None = None):
    """``path`` as UTF-8 text without a leading BOM, gunzipped when its name ends with .gz (``newline`` as in ``open``).

    UTF-16/UTF-32 text raises ``DataError``; other errors are those of opening and reading (``READ_ERRORS``)."""
    path = Path(path)
    raw = _open_binary(path)
    try:
        wide = _wide_encoding(raw.peek(4)[:4])
    except BaseException:
        raw.close()
        raise
    if wide:
        raw.close()
        raise DataError(f"{path}: is {wide} text, not UTF-8. Fix: save it as UTF-8 (e.g. iconv -f {wide} -t UTF-8)")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline=newline)


def _bad_utf8_line(path: Path) -> tuple[int, UnicodeDecodeError] | None:
    """The first line (1-based) of ``path`` that is not UTF-8, with its error; None if not found."""
    try:
        with _open_binary(path) as f:
            for i, line in enumerate(f, 1):  # b"\n" never occurs inside a UTF-8 character, so lines split cleanly
                try:
                    line.decode("utf-8-sig" if i == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    return i, e
    except READ_ERRORS:
        pass
    return None


def unreadable(path: Path, e: BaseException) -> DataError:
    """The ``DataError`` for one of ``READ_ERRORS`` raised while reading ``path``."""
    if isinstance(e, UnicodeDecodeError):
        found = _bad_utf8_line(path)
        where, e = (f"{path}:{found[0]}", found[1]) if found else (str(path), e)
        byte = e.object[e.start : e.start + 1].hex() if isinstance(e.object, bytes) else "?"
        return DataError(
            f"{where}: is not UTF-8 text (byte 0x{byte}: {e.reason}). Fix: save the file as UTF-8 "
            "(e.g. iconv -f LATIN1 -t UTF-8 when it came from an old Windows tool)"
        )
    if _is_gz(path) and isinstance(e, (gzip.BadGzipFile, EOFError, zlib.error)):
        return DataError(
            f"{path}: cannot be read as gzip ({e}). Fix: compress it again with gzip, or drop the .gz "
            "ending if it is plain text"
        )
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return DataError(f"{path}: cannot be read ({reason}). Fix: check that the file exists and is readable")


def has_lone_surrogate(text: str, value: Any) -> bool:
    """Whether ``value``, parsed from the JSON ``text``, holds half a surrogate pair (``"\\ud800"``): valid JSON, but
    not Unicode, so that writing it as UTF-8 or tokenizing it fails later."""
    if not _SURROGATE_ESCAPE.search(text):
        return False
    stack = [value]
    while stack:  # no recursion: the value may be nested as deep as the parser allows
        v = stack.pop()
        if isinstance(v, str):
            if _LONE_SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def parse_json(text: str, what: str) -> tuple[Any, tuple[int | None, str, str] | None]:
    """``(value, None)``, or ``(None, (line in text or None, what is wrong, fix))`` when ``text`` is not usable JSON.

    ``what``: "each line" (a JSONL line) or "the file" (a whole .json file), for the fix."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if "\x00" in text:
            line = text.count("\n", 0, text.index("\x00")) + 1
            return None, (line, "holds NUL bytes, so it is not a text file (UTF-16? binary?)", "save it as UTF-8 text")
        problem = f"not valid JSON ({e.msg} at column {e.colno})"
        if what == "each line" and text.strip() in ("{", "["):
            fix = "this looks like one JSON document spread over lines; name the file .json, or write one object a line"
            return None, (e.lineno, problem, fix)
        return None, (e.lineno, problem, f"{what} must be {_SHAPE[what]}")
    except RecursionError:
        return None, (
            None,
            "is nested too deeply to read",
            "flatten the record (at most a few hundred levels of [ and {)",
        )
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        return None, (None, f"not readable JSON ({str(e).split(';')[0]})", "write huge numbers as strings")
    if has_lone_surrogate(text, value):
        return None, (
            None,
            "holds an unpaired surrogate escape (\\ud800-\\udfff), which is not Unicode text",
            "write the character itself, or both halves of its surrogate pair",
        )
    return value, None


_SHAPE = {"each line": "one JSON object", "the file": 'a JSON list of objects (or {"data": [...]})'}


def iter_jsonl(path: str | Path, on_bad_line: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, Any]]:
    """``(source, record)`` per non-blank line, source ``path:line``. A bad line raises ``DataError`` naming it, or,
    with ``on_bad_line``, is passed to it as ``(source, what is wrong)`` and skipped; an unreadable file raises."""
    path = Path(path)
    try:
        with open_text(path) as f:
            for i, line in enumerate(f, 1):
                line = line[1:] if line.startswith("\ufeff") else line  # a BOM inside: files joined with cat
                if not line.strip():
                    continue
                record, problem = parse_json(line, "each line")
                if problem is not None:
                    if on_bad_line is None:
                        raise DataError(f"{path}:{i}: {problem[1]}. Fix: {problem[2]}")
                    on_bad_line(f"{path}:{i}", problem[1])
                    continue
                yield f"{path}:{i}", record
    except READ_ERRORS as e:
        raise unreadable(path, e) from None


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
