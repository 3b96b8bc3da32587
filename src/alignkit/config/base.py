"""How a config is declared, loaded, checked and saved: ``setting`` declares a dataclass field with its help text
(and choices); ``load_config`` builds a config from YAML, a dict and ``--set section.field=value`` overrides,
checking every name and type; ``require`` raises the ``ConfigError`` naming the file, the field and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import ConfigError

EMBEDDED_MODEL = "smollm2-135m-instruct"


def setting(default: Any, help: str, choices: tuple | None = None, **kw):
    """A config field with a default, a one-line ``help`` (shown by ``alignkit config``) and allowed ``choices``."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta, **kw)  # own lists, sections
    return field(default=default, metadata=meta, **kw)


def require(ok: bool, where: str, name: str, value: Any, fix: str) -> None:
    """``ConfigError`` "WHERE: field 'NAME' is VALUE. Fix: FIX" unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: field '{name}' is {value!r}. Fix: {fix}")


def load_config(
    cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> Any:
    """Build ``cls`` from a YAML file (optional), a dict, and ``key.sub=value`` overrides, then validate."""
    data: dict = dict(base or {})
    where = str(path) if path else "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist. Fix: pass a path to a YAML file, e.g. configs/dpo.yaml"
            )
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, train, ...)")
        data = _deep_merge(data, loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: use --set section.field=value, e.g. --set train.learning_rate=1e-5")
        data = _deep_merge(data, _nest(key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None))
        where = f"{where} (with --set overrides)" if "--set" not in where else where
    data = _apply_preset(cls, data, where)
    cfg = from_dict(cls, data, where)
    cfg.validate(where)
    return cfg


def _apply_preset(cls: type, data: dict, where: str) -> dict:
    """``method.preset: NAME`` -> the preset's settings (``PRESETS`` of the method section's class) under the
    given ones: every field the config sets itself keeps its value."""
    method = data.get("method")
    if not isinstance(method, dict) or method.get("preset") is None:
        return data
    section = _strip_optional(typing.get_type_hints(cls).get("method", type(None)))
    presets = getattr(section, "PRESETS", {})
    name = method["preset"]
    if name not in presets:
        known = ", ".join(presets) or "none for this method"
        raise ConfigError(f"{where}: method.preset {name!r} is not a preset. Fix: use one of: {known}")
    return _deep_merge({"method": dict(presets[name])}, data)


def from_dict(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """Recursively build dataclass ``cls`` from a mapping, checking names and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        guess = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean '{prefix}{guess[0]}'?" if guess else f"known fields: {', '.join(names)}"
        raise ConfigError(f"{where}: unknown field '{prefix}{key}'. Fix: {hint}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where, f"{prefix}{name}", names[name])
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, name: str, f: dataclasses.Field) -> Any:
    optional = _is_optional(tp)
    inner = _strip_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ConfigError(f"{where}: field '{name}' may not be null. Fix: give a value ({f.metadata.get('help', '')})")
    if dataclasses.is_dataclass(inner):
        return from_dict(inner, value, where, name + ".")
    choices = f.metadata.get("choices")
    out = value
    if inner is bool:
        if not isinstance(value, bool):
            raise _type_error(where, name, value, "true or false")
    elif inner is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not _is_int(value):
            raise _type_error(where, name, value, "a whole number")
        out = int(float(value))
    elif inner is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        except (TypeError, ValueError):
            raise _type_error(where, name, value, "a number") from None
    elif inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _type_error(where, name, value, "a string")
        out = str(value)
    elif inner is list:
        if not isinstance(value, list):
            out = [value] if isinstance(value, str) else None
            if out is None:
                raise _type_error(where, name, value, "a list")
    if choices and out not in choices:
        guess = difflib.get_close_matches(str(out), [str(c) for c in choices], n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise ConfigError(f"{where}: field '{name}' is {out!r}; it must be one of {', '.join(map(str, choices))}{hint}")
    return out


def _is_int(value: Any) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _type_error(where: str, name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where}: field '{name}' is {value!r}; expected {expected}")


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if _is_optional(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return tp


def _nest(keys: list[str], value: Any) -> dict:
    return {keys[0]: _nest(keys[1:], value) if len(keys) > 1 else value}


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict:
    """Plain dict of a config (for saving next to a run)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
