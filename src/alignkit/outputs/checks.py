"""What a command may write, checked before any work: never an input, never a directory it did not make unless
``--overwrite``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from alignkit.errors import UserError
from alignkit.outputs.atomic import write_text_atomic

OWNER_FILE = ".alignkit-output"  # in a directory a command made: which command, so a re-run may replace it


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def _resolved(paths: Iterable[str | Path | None]) -> list[Path]:
    """Local paths among data specs and paths (``a.jsonl[:100] + b.jsonl`` -> a.jsonl, b.jsonl; builtins skipped)."""
    out = []
    for spec in paths:
        if spec is None:
            continue
        for part in str(spec).split(" + "):
            part = part.strip()
            if part.startswith("builtin:") or not part:
                continue
            if not Path(part).exists() and part.endswith("]") and "[" in part:
                part = part[: part.rindex("[")]
            out.append(Path(part).resolve())
    return out


def check_output_file(
    path: str | Path | None, *, overwrite: bool = False, inputs: Iterable = (), option: str = "--out"
) -> Path | None:
    """``path`` as a file output: not an input, not a directory, its parent creatable, and new unless
    ``overwrite``. Returns the path (None when no output was asked for). Raises ``UserError`` naming ``option``."""
    if path is None:
        return None
    path = Path(path)
    target = path.resolve()
    for source in _resolved(inputs):
        if target == source:
            raise UserError(f"{option} {path} is an input of this command; refusing to overwrite it. "
                            "Fix: write to another file")  # fmt: skip
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory. Fix: give a file name, e.g. {path / 'out.jsonl'}")
    _check_parent(path, option)
    if path.exists() and not overwrite:
        raise UserError(f"{option} {path} already exists. Fix: choose another file, or add --overwrite to replace it")
    return path


def check_output_dir(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    option: str = "--out",
    owner: str | None = None,
) -> Path:
    """``path`` as a directory output. Refused when it is a file, is or holds an input (even with ``overwrite``),
    or is a non-empty directory that ``owner`` (a command name, see ``claim_dir``) did not make, unless
    ``overwrite``."""
    path = Path(path)
    target = path.resolve()
    for source in _resolved(inputs):
        if target == source or _inside(source, target):
            raise UserError(
                f"{option} {path} holds {source}, an input of this command; writing there would delete it. "
                "Fix: write to a new directory"
            )
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a directory. Fix: give a directory path")
    _check_parent(path, option)
    if path.is_dir() and any(path.iterdir()) and not overwrite and not made_by(path, owner):
        shown = ", ".join(sorted(p.name for p in path.iterdir())[:4])
        raise UserError(
            f"{option} {path} already holds files alignkit did not write there ({shown}). "
            "Fix: choose a new directory, or add --overwrite to replace them"
        )
    return path


def made_by(path: Path, owner: str | None) -> bool:
    """Whether ``path`` was made by the command ``owner`` (its ``OWNER_FILE`` names it)."""
    marker = Path(path) / OWNER_FILE
    if owner is None or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("command") == owner
    except (OSError, ValueError, AttributeError):
        return False


def claim_dir(path: str | Path, owner: str) -> Path:
    """Create ``path`` (if needed) and mark it as made by the command ``owner``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / OWNER_FILE, json.dumps({"command": owner}) + "\n")
    return path


def _check_parent(path: Path, option: str) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, so {path} cannot be created. Fix: choose another path")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{option} {path}: {parent} is not writable. Fix: choose a directory you can write to")


def own_output_dir(
    path: str | Path, owner: str, *, overwrite: bool = False, inputs: Iterable = (), option: str = "--output-dir"
) -> Path:
    """``check_output_dir`` then ``claim_dir``: a directory a recipe may fill (and a re-run of it replace)."""
    check_output_dir(path, overwrite=overwrite, inputs=inputs, option=option, owner=owner)
    return claim_dir(path, owner)
