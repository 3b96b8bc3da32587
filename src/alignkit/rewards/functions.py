"""Reward functions for online RL: the contract, loading them by name, and running them in worker processes.

The contract
------------
::

    fn(prompts: list[Content], completions: list[str], **columns) -> list[float | None]

- ``prompts``: the batch's prompts, each text or a conversation (a tuple/list of ``{"role", "content"}`` messages,
  ``alignkit.data.formats.Content``).
- ``completions``: the decoded completion texts, aligned with ``prompts``.
- ``columns``: the other fields of the prompt records, each a list aligned with ``prompts`` (``answer=[...]``,
  ``tests=[...]``). A function names the columns it needs and must accept and ignore the rest (``**kwargs``).
- It returns one value per completion: a number, or ``None`` = "no reward for this sample" (say, the record has no
  gold answer). The trainer masks a None sample out and counts it; it is never scored as 0.
- Returning a list of the wrong length, or a value that is neither a finite number nor None, violates the
  contract; that is reported as an error naming the function.

Functions are named by a spec (``load_reward_function``): ``module:function``, ``path/to/file.py:function``, or a
built-in short name (``BUILTINS``: ``math``, ``math_format``, ``code``). ``RewardSpec`` adds a weight, a per-call
timeout and a name; ``RewardRunner`` runs the specs on a batch in worker processes and combines them into a
``RewardResult`` (``alignkit.rewards.runner``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from alignkit.errors import ConfigError, UserError

RewardFunction = Callable[..., Any]  # the contract above
FunctionSpec = Union[str, RewardFunction]

BUILTINS = {
    "math": "alignkit.rewards.verifiers.math:math_reward",
    "math_format": "alignkit.rewards.verifiers.math:math_format_reward",
    "code": "alignkit.rewards.verifiers.code:code_reward",
}
_FORMS = "module:function, path/to/file.py:function, or a built-in name (" + ", ".join(BUILTINS) + ")"

# --------------------------------------------------------------------------------------------- loading


def load_reward_function(spec: str) -> RewardFunction:
    """The function that ``spec`` names: a built-in name, ``module:function`` or ``path/to/file.py:function``.

    Raises ``UserError`` naming the spec and the fix when it cannot be loaded.
    """
    return load_object(BUILTINS.get(spec.strip(), spec) if isinstance(spec, str) else spec, "reward function",
                       "a function fn(prompts, completions, **columns) -> list[float | None]", shown=spec)  # fmt: skip


def load_object(spec: str, kind: str, should_be: str, shown: str | None = None) -> Callable[..., Any]:
    """The callable that ``spec`` (``module:name`` or ``path/to/file.py:name``) names; ``kind`` (e.g. "reward
    function", "environment") and ``should_be`` word the errors. Raises ``UserError`` naming the spec and the fix."""
    shown = spec if shown is None else shown
    forms = _FORMS if kind == "reward function" else "module:Name or path/to/file.py:Name"
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"{kind} {shown!r}: not a name. Fix: use {forms}")
    spec = spec.strip()
    module_name, colon, attr = spec.rpartition(":")
    if not colon or not module_name or not attr:
        raise UserError(
            f"{kind} {shown!r}: not a built-in name and no ':' before the {kind.split()[-1]}. "
            f"Fix: use {forms}, e.g. {spec.rstrip(':') or 'my_module'}:my_{kind.split()[0]}"
        )
    load = _import_file if module_name.endswith(".py") else _import_module
    module = load(shown, module_name, kind)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            has = f" (it has: {', '.join(public[:12])})" if public else ""
            raise UserError(f"{kind} {shown!r}: {module_name} has no attribute {attr!r}{has}. Fix: check the name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{kind} {shown!r}: {attr} is a {type(obj).__name__}, not a {kind.split()[-1]}. "
                        f"Fix: name {should_be}")  # fmt: skip
    return obj


def _import_module(spec: str, name: str, kind: str = "reward function"):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise UserError(
                f"{kind} {spec!r}: no module named {name!r}. Fix: check the spelling, install it or put "
                f"it on PYTHONPATH; a file is written path/to/file.py:name"
            ) from None
        raise UserError(f"{kind} {spec!r}: importing {name} failed: {e}. Fix: install {e.name}") from None
    except Exception as e:
        raise UserError(f"{kind} {spec!r}: importing {name} failed ({type(e).__name__}: {e})") from None


def _import_file(spec: str, path_text: str, kind: str = "reward function"):
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(
            f"{kind} {spec!r}: file {path} does not exist. Fix: check the path (relative paths start from {Path.cwd()})"
        )
    path = path.resolve()
    name = f"alignkit_reward_file_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it, so its functions pickle by reference
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise UserError(f"{kind} {spec!r}: running {path} failed ({type(e).__name__}: {e})") from None
    return module


def short_name(function: FunctionSpec) -> str:
    """``math`` -> ``math``; ``pkg.mod:fn`` and ``dir/file.py:fn`` -> ``fn``; a callable -> its ``__name__``."""
    if callable(function):
        return getattr(function, "__name__", type(function).__name__)
    return str(function).strip().rpartition(":")[2] or str(function).strip()


def portable(function: FunctionSpec) -> FunctionSpec:
    """A spec a worker process loads the same way: file paths made absolute (workers may start elsewhere)."""
    if isinstance(function, str) and function.strip() not in BUILTINS:
        path, colon, attr = function.strip().rpartition(":")
        if colon and path.endswith(".py"):
            return f"{Path(path).expanduser().resolve()}:{attr}"
    return function


# --------------------------------------------------------------------------------------------- contract


class ContractViolation(Exception):
    """A reward function returned something other than one number-or-None per completion."""


def check_rewards(values: Any, n: int, name: str) -> list[float | None]:
    """``values`` as ``n`` floats-or-None; raises ``ContractViolation`` naming the function otherwise."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ContractViolation(
            f"reward function '{name}' returned a {type(values).__name__}; the contract is a list with one "
            "number or None per completion"
        )
    values = list(values)
    if len(values) != n:
        raise ContractViolation(f"reward function '{name}' returned {len(values)} values for {n} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
        elif isinstance(v, numbers.Real) and math.isfinite(float(v)):
            out.append(float(v))
        else:
            raise ContractViolation(
                f"reward function '{name}' returned {v!r} ({type(v).__name__}) for completion {i} of the call; "
                "each value must be a finite number or None"
            )
    return out


# --------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class RewardSpec:
    """One reward function in a combination.

    ``function``: a spec string (``load_reward_function``) or, for ``workers=0`` or module-level functions, the
    callable itself. ``weight``: its factor in the sum. ``timeout``: seconds one call (a chunk) may take in a
    worker. ``name``: for metrics and results; defaults to the function's short name.
    """

    function: FunctionSpec
    weight: float = 1.0
    timeout: float = 30.0
    name: str | None = None

    def __post_init__(self):
        if not callable(self.function) and (not isinstance(self.function, str) or not self.function.strip()):
            raise ConfigError(f"reward function: {self.function!r} is not a name. Fix: use {_FORMS}")
        if self.name is None:
            object.__setattr__(self, "name", short_name(self.function))

    @classmethod
    def from_config(cls, value: Any, field: str = "reward") -> RewardSpec:
        """A spec string, or a mapping ``{function, weight, timeout, name}``; ``ConfigError`` naming ``field``."""
        if isinstance(value, str):
            value = {"function": value}
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{field}: {value!r} is not a reward function. Fix: give a name ({_FORMS}) or a mapping with "
                "function, weight, timeout, name"
            )
        unknown = sorted(set(value) - {"function", "weight", "timeout", "name"})
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}: unknown key. Fix: use function, weight, timeout, name")
        function = value.get("function")
        if not isinstance(function, str) or not function.strip():
            raise ConfigError(f"{field}.function: {function!r} is missing or not a name. Fix: use {_FORMS}")
        weight, timeout, name = value.get("weight", 1.0), value.get("timeout", 30.0), value.get("name")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"{field}.weight: {weight!r} is not a finite number. Fix: e.g. weight: 0.5")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ConfigError(f"{field}.timeout: {timeout!r} is not a positive number of seconds. Fix: e.g. 30")
        if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name):
            raise ConfigError(f"{field}.name: {name!r} is not a usable name. Fix: a short word without '/'")
        return cls(function.strip(), float(weight), float(timeout), name)


def parse_reward_specs(value: Any, field: str = "rewards") -> list[RewardSpec]:
    """A config value (one spec, or a list of them) -> specs; ``ConfigError`` naming ``field[i].key``."""
    if isinstance(value, (str, Mapping)):
        return [RewardSpec.from_config(value, field)]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{field}: {value!r} names no reward function. Fix: e.g. {field}: [math]")
    specs = [RewardSpec.from_config(v, f"{field}[{i}]") for i, v in enumerate(value)]
    check_unique_names(specs, field)
    return specs


def check_unique_names(specs: list[RewardSpec], field: str) -> None:
    seen = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ConfigError(f"{field}[{i}].name: two reward functions are named '{spec.name}'. Fix: set name")
        seen.add(spec.name)
