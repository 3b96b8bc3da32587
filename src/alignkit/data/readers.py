"""Read raw records from files or HF datasets, each tagged with where it came from (``file:line``).

Formats: .jsonl, .jsonl.gz, .json (a list of objects, or {"data": [...]}), .parquet, .csv, a directory saved
with ``datasets.save_to_disk``, or a hub dataset id (``datasets`` installed, network available).
"""

from __future__ import annotations

import csv
import errno
import re
import stat
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from alignkit.data.jsonl import READ_ERRORS, iter_jsonl, open_text, parse_json, unreadable
from alignkit.errors import DataError

Record = tuple[str, Any]  # (source like "train.jsonl:12", the raw record)


BUILTIN = "builtin:"  # data shipped inside the package, e.g. builtin:demo_prefs_train.jsonl


def builtin_path(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / name


_PLUS = re.compile(r" \+ (?![^\[]*\])")  # " + " joining specs, not inside a slice's brackets
_BRACKETS = re.compile(r"^(.*)\[([^\[\]]*)\]$", re.S)  # NAME[...]: meant as a slice
_SLICE = re.compile(r"^\s*([-+]?\d{1,30})?\s*:\s*([-+]?\d{1,30})?\s*$")  # START:STOP, either optional


def read_records(spec: str, split: str = "train") -> list[Record]:
    """All records of ``spec`` (a path, ``builtin:NAME``, or a hub dataset id) as ``(source, record)`` pairs.

    A Python slice after the name selects records by position, as in HF's ``train[:1200]``:
    ``pairs.jsonl.gz[:1200]``, ``pairs.jsonl.gz[1200:]``, ``pairs.jsonl.gz[-300:]``. Sources keep file line numbers.
    Specs joined by `` + `` are read one after another: ``hh.jsonl.gz[:400] + builtin:judge_prefs.jsonl``.
    Anything wrong with the spec or the file raises ``DataError`` naming it and the fix.
    """
    parts = _PLUS.split(spec)
    if len(parts) > 1 and _kind(Path(spec)) == "missing":
        return [r for part in parts for r in read_records(part.strip(), split)]
    bracket = _BRACKETS.match(spec)
    if bracket and _kind(Path(spec)) == "missing":
        name, inside = bracket.groups()
        sliced = _SLICE.match(inside)
        if not sliced:
            raise DataError(
                f"{spec}: [{inside}] is not a slice of record positions. Fix: use NAME[START:STOP] with integers, "
                "either optional, e.g. pairs.jsonl[:100] or pairs.jsonl[-50:]"
            )
        start, stop = sliced.groups()
        return read_records(name, split)[int(start) if start else None : int(stop) if stop else None]
    if spec.startswith(BUILTIN):
        path = builtin_path(spec[len(BUILTIN) :])
        if _kind(path) != "file":
            known = sorted(p.name for p in path.parent.glob("*.jsonl"))
            raise DataError(
                f"{spec}: no such built-in data set. Fix: use one of {', '.join('builtin:' + k for k in known)}"
            )
        return read_records(str(path), split)
    path = Path(spec)
    kind = _kind(path)
    if kind == "dir":
        return list(_read_hf(spec, split, local=True))
    if kind == "file":
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            return list(iter_jsonl(path))
        if name.endswith((".json", ".json.gz")):
            return _read_json(path)
        if name.endswith(".parquet"):
            return list(_read_parquet(path))
        if name.endswith((".csv", ".csv.gz")):
            return _read_csv(path)
        raise DataError(f"{path}: unknown file type. Fix: use .jsonl, .jsonl.gz, .json, .parquet or .csv")
    if kind == "other":
        raise DataError(f"{spec}: is not a regular file (a device or a pipe?). Fix: save the data to a file first")
    if kind != "missing":
        raise DataError(f"{spec}: cannot be looked at ({kind}). Fix: check the path and its permissions")
    if spec.count("/") == 1 and not spec.startswith((".", "/")) and not path.suffix:
        return list(_read_hf(spec, split, local=False))
    raise DataError(f"data file {spec} does not exist. Fix: check the path (relative paths start from {Path.cwd()})")


def _kind(path: Path) -> str:
    """ "file", "dir", "other" (a device, a pipe), "missing", or why ``path`` cannot be looked at."""
    try:
        mode = path.stat().st_mode
    except ValueError:  # a NUL in the name: no such file can exist
        return "missing"
    except OSError as e:
        return "missing" if e.errno in (errno.ENOENT, errno.ENOTDIR) else (e.strerror or str(e))
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"


def _read_json(path: Path) -> list[Record]:
    try:
        with open_text(path) as f:
            text = f.read()
    except READ_ERRORS as e:
        raise unreadable(path, e) from None
    if not text.strip():
        return []
    data, problem = parse_json(text, "the file")
    if problem is not None:
        line, what, fix = problem
        raise DataError(f"{path}{f':{line}' if line else ''}: {what}. Fix: {fix}")
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of records, got a JSON {_json_type(data)}. Fix: write the records as a list "
            '[{...}, {...}] (or {"data": [...]}), or as JSONL, one object a line'
        )
    return [(f"{path}[{i}]", rec) for i, rec in enumerate(data)]


def _json_type(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "true/false", int: "number", float: "number"}
    return kinds.get(type(value), "null")


def _read_parquet(path: Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow. Fix: pip install 'alignkit[data]'") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    for i, rec in enumerate(rows):
        yield f"{path}:row {i}", rec


_CSV_FIELD_LIMIT = 2**31 - 1  # csv's default, 128 KiB a cell, refuses long documents


def _read_csv(path: Path) -> list[Record]:
    """CSV cells are text; a cell holding a JSON list (chat messages) is decoded."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))  # process-wide, and only ever raised
    records, start = [], 2  # line 1 is the header; a quoted cell may span lines, so track where each record starts
    try:
        with open_text(path, newline="") as f:  # csv reads line ends itself, keeping "\r" inside quoted cells
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            _check_cells(f"{path}:1", header)
            dupes = sorted({h for h, n in Counter(header).items() if n > 1})
            if dupes:
                raise DataError(
                    f"{path}:1: the header names column(s) {dupes} twice. Fix: give each column its own name"
                )
            for row in reader:
                where = f"{path}:{start}"
                if None in row or None in row.values():
                    cells = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
                    raise DataError(
                        f"{where}: has {cells} cell(s) but the header (line 1) has {len(header)}. Fix: quote cells "
                        'that hold commas ("a, b"), or give every row one cell per column'
                    )
                _check_cells(where, row.values())
                records.append((where, {k: _maybe_json(v) for k, v in row.items()}))
                start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(
            f"{path}:{start}: not valid CSV ({e}). Fix: quote cells that hold commas, quotes or line breaks"
        ) from None
    except READ_ERRORS as e:
        raise unreadable(path, e) from None
    return records


def _check_cells(where: str, cells: Iterable[str]) -> None:
    if any("\x00" in c for c in cells):
        raise DataError(f"{where}: holds NUL bytes, so it is not a text file (UTF-16? binary?). Fix: save it as UTF-8")


def _maybe_json(value: str) -> Any:
    if value.lstrip().startswith("[{"):
        decoded, problem = parse_json(value, "the file")
        return value if problem is not None else decoded
    return value


def _read_hf(spec: str, split: str, local: bool) -> Iterator[Record]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: reading HF datasets needs `datasets`. Fix: pip install 'alignkit[data]'") from None
    try:
        if local:
            ds = datasets.load_from_disk(spec)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{spec}: no split '{split}' (has {', '.join(ds)}). Fix: set data.split")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(spec, split=split)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"{spec}: could not load as an HF dataset ({type(e).__name__}: {e}). "
            "Fix: give a local file, or check the dataset id and network access"
        ) from None
    for i, rec in enumerate(ds):
        yield f"{spec}[{split}][{i}]", rec
