"""Read raw records from files or HF datasets, each tagged with where it came from (``file:line``).

Formats: .jsonl, .jsonl.gz, .json (a list of objects, or {"data": [...]}), .parquet, .csv, a directory saved
with ``datasets.save_to_disk``, or a hub dataset id (``datasets`` installed, network available).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Iterator

from alignkit.data.jsonl import iter_jsonl, open_text
from alignkit.errors import DataError

Record = tuple[str, Any]  # (source like "train.jsonl:12", the raw record)


BUILTIN = "builtin:"  # data shipped inside the package, e.g. builtin:demo_prefs_train.jsonl


def builtin_path(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / name


_SLICE = re.compile(r"^(.*)\[(-?\d*):(-?\d*)\]$")


def read_records(spec: str, split: str = "train") -> list[Record]:
    """All records of ``spec`` (a path, ``builtin:NAME``, or a hub dataset id) as ``(source, record)`` pairs.

    A Python slice after the name selects records by position, as in HF's ``train[:1200]``:
    ``pairs.jsonl.gz[:1200]``, ``pairs.jsonl.gz[1200:]``, ``pairs.jsonl.gz[-300:]``. Sources keep file line numbers.
    Specs joined by `` + `` are read one after another: ``hh.jsonl.gz[:400] + builtin:judge_prefs.jsonl``.
    """
    if " + " in spec and not Path(spec).exists():
        return [r for part in spec.split(" + ") for r in read_records(part.strip(), split)]
    sliced = _SLICE.match(spec)
    if sliced and not Path(spec).exists():
        name, start, stop = sliced.groups()
        records = read_records(name, split)
        return records[int(start) if start else None : int(stop) if stop else None]
    if spec.startswith(BUILTIN):
        path = builtin_path(spec[len(BUILTIN) :])
        if not path.is_file():
            known = sorted(p.name for p in path.parent.glob("*.jsonl"))
            raise DataError(
                f"{spec}: no such built-in data set. Fix: use one of {', '.join('builtin:' + k for k in known)}"
            )
        return read_records(str(path), split)
    path = Path(spec)
    if path.is_dir():
        return list(_read_hf(spec, split, local=True))
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            return list(iter_jsonl(path))
        if name.endswith((".json", ".json.gz")):
            return list(_read_json(path))
        if name.endswith(".parquet"):
            return list(_read_parquet(path))
        if name.endswith((".csv", ".csv.gz")):
            return list(_read_csv(path))
        raise DataError(f"{path}: unknown file type. Fix: use .jsonl, .jsonl.gz, .json, .parquet or .csv")
    if spec.count("/") == 1 and not spec.startswith((".", "/")) and not path.suffix:
        return list(_read_hf(spec, split, local=False))
    raise DataError(f"data file {spec} does not exist. Fix: check the path (relative paths start from {Path.cwd()})")


def _read_json(path: Path) -> Iterator[Record]:
    try:
        with open_text(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}). Fix: the file must hold a JSON list of objects"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of records (or {{"data": [...]}}), got {type(data).__name__}')
    for i, rec in enumerate(data):
        yield f"{path}[{i}]", rec


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


def _read_csv(path: Path) -> Iterator[Record]:
    """CSV cells are text; a cell holding a JSON list (chat messages) is decoded."""
    with open_text(path) as f:
        reader = csv.DictReader(f)
        start = 2  # line 1 is the header; a quoted cell may span lines, so track where each record starts
        for row in reader:
            yield f"{path}:{start}", {k: _maybe_json(v) for k, v in row.items() if k is not None}
            start = reader.line_num + 1


def _maybe_json(value: str | None) -> Any:
    if value and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
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
