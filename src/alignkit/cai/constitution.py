"""A constitution: principles, each with a critique request, a revision request and a comparison question.

``Principle.comparison`` is what an AI judge is asked when it picks the better of two responses (RLAIF), e.g.
"Which response is less harmful?"; ``critique`` and ``revision`` drive the supervised phase (Bai et al. 2022).

The shipped constitution is ``resources/constitution.yaml`` (written for this project); a user file has the same
shape: ``principles:`` followed by a list of ``{name, critique, revision, comparison}`` (a bare list works too).

Principle choice is a pure function of ``(seed, item, round)`` (``Constitution.pick``): item i of a run gets the
same principles whichever batch it lands in, and a rerun with the same seed picks the same ones. Within one item the
rounds walk a seeded permutation, so R <= len(constitution) rounds never repeat a principle.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Sequence

import yaml

from alignkit.errors import ConfigError

FIELDS = ("name", "critique", "revision", "comparison")
SHAPE = "principles: [{name, critique, revision, comparison}, ...]"


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # "Identify specific ways in which the response is harmful, ..."
    revision: str  # "Rewrite the response to remove any harmful, ... content."
    comparison: str  # "Which of these responses is less harmful ...?"


@dataclass(frozen=True)
class Constitution:
    """An ordered, non-empty tuple of principles with unique names; ``source`` is the file it came from."""

    principles: tuple[Principle, ...]
    source: str = "builtin:constitution.yaml"

    def __len__(self) -> int:
        return len(self.principles)

    def __iter__(self) -> Iterator[Principle]:
        return iter(self.principles)

    def __getitem__(self, key: int | str) -> Principle:
        if isinstance(key, str):
            for p in self.principles:
                if p.name == key:
                    return p
            raise ConfigError(f"{self.source}: no principle named {key!r}. Fix: use one of {', '.join(self.names)}")
        return self.principles[key]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.principles]

    def select(self, names: Sequence[str]) -> Constitution:
        """The principles named in ``names`` (in that order); ``ConfigError`` for an unknown name."""
        if not names:
            return self
        return Constitution(tuple(self[n] for n in dict.fromkeys(names)), self.source)

    def pick(self, seed: int, item: int, round: int = 0) -> Principle:
        """The principle of ``item``'s round ``round``: element ``round % len`` of a permutation seeded by
        ``(seed, item)``, so it depends on nothing else (not the batch, not the other items)."""
        order = list(range(len(self.principles)))
        random.Random(derive_seed(seed, "principle", item)).shuffle(order)
        return self.principles[order[round % len(order)]]

    def sample(self, n: int, seed: int, start: int = 0, round: int = 0) -> list[Principle]:
        """Principles of items ``start .. start + n - 1`` for ``round``: ``[pick(seed, start + j, round) ...]``."""
        return [self.pick(seed, start + j, round) for j in range(n)]


def derive_seed(seed: int, *keys) -> int:
    """A 31-bit seed that is a pure function of ``seed`` and ``keys`` (e.g. stage, round, item index)."""
    digest = hashlib.sha256("/".join(map(str, ("alignkit-cai", seed, *keys))).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def load_constitution(path: str | Path | None = None) -> Constitution:
    """The constitution in ``path`` (YAML; default the shipped one), validated: one ``ConfigError`` naming the file,
    the principle (index and name), the field and the fix."""
    if path is None or str(path) in ("builtin:constitution.yaml", "builtin"):
        from alignkit.data.readers import builtin_path

        path, source = builtin_path("constitution.yaml"), "builtin:constitution.yaml"
    else:
        source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"constitution {source} cannot be read ({e}). Fix: give a YAML file like {SHAPE}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"constitution {source}: not valid YAML ({e}). Fix: write {SHAPE}") from None
    return Constitution(parse_principles(data, source), source)


def parse_principles(data, source: str = "constitution") -> tuple[Principle, ...]:
    """Validated principles from loaded YAML (a mapping with ``principles`` or a bare list)."""
    if isinstance(data, dict):
        extra = [k for k in data if k != "principles"]
        if extra:
            raise ConfigError(f"{source}: unknown top-level key {extra[0]!r}. Fix: the file holds only {SHAPE}")
        data = data.get("principles")
    if not isinstance(data, list):
        raise ConfigError(f"{source}: 'principles' must be a list, got {type(data).__name__}. Fix: write {SHAPE}")
    if not data:
        raise ConfigError(f"{source}: zero principles. Fix: give at least one {{name, critique, revision, comparison}}")
    out, seen = [], {}
    for i, item in enumerate(data):
        where = f"{source}: principles[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} is a {type(item).__name__}, not a mapping. Fix: write {{{', '.join(FIELDS)}}}")
        name = item.get("name")
        if isinstance(name, str) and name.strip():
            where += f" ({name.strip()!r})"
        unknown = [k for k in item if k not in FIELDS]
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}. Fix: use only {', '.join(FIELDS)}")
        for f in FIELDS:
            value = item.get(f)
            if f not in item or value is None:
                raise ConfigError(f"{where}: field '{f}' is missing. Fix: add {f}: <text> ({_hint(f)})")
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: field '{f}' is empty or not text ({value!r}). Fix: write {_hint(f)}")
        principle = Principle(**{f.name: item[f.name].strip() for f in fields(Principle)})
        if principle.name in seen:
            raise ConfigError(f"{where}: field 'name' repeats principles[{seen[principle.name]}]. "
                              "Fix: give every principle a unique name")  # fmt: skip
        seen[principle.name] = i
        out.append(principle)
    return tuple(out)


def _hint(field: str) -> str:
    return {
        "name": "a short unique identifier, e.g. privacy",
        "critique": "a request to critique a reply, e.g. 'Point out how the reply exposes private information.'",
        "revision": "a request to rewrite the reply, e.g. 'Rewrite the reply so it protects privacy.'",
        "comparison": "the question a judge answers, e.g. 'Which reply better respects privacy?'",
    }[field]
