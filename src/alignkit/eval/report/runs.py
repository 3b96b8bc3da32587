"""What ``alignkit report`` reads from a run directory, checked: metrics.jsonl, config.yaml, eval/*.json and
eval/generations.jsonl. The file conventions are in ``alignkit.eval.report.page``.

A missing run directory (or one with neither metrics.jsonl nor eval/) raises ``UserError``; a file or line that
cannot be read goes to ``Run.skipped`` as (file, what is wrong) and everything else is still read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignkit.data.jsonl import iter_jsonl
from alignkit.errors import DataError, UserError


@dataclass
class EvalFile:
    name: str  # the file name in eval/
    kind: str
    data: dict  # checked; winrate and overopt normalized (see _check_winrate, _check_overopt); a winrate's
    # fields beyond WINRATE_FIELDS are in data["extra"]


@dataclass
class Run:
    path: Path
    label: str = ""
    config: dict | None = None
    rows: list[dict] = field(default_factory=list)  # metrics.jsonl
    evals: list[EvalFile] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)  # {"prompt": text, "outputs": {column: text}}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file[:line], what is wrong)


class Bad(Exception):
    """Why a file or line is skipped."""


def collect_run(path: Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a run directory" if path.exists() else "does not exist"
        raise UserError(
            f"run directory {path} {what}. Fix: pass the train.output_dir of a run (it holds metrics.jsonl) "
            "or a directory with evaluation results in eval/*.json"
        )
    metrics, eval_dir = path / "metrics.jsonl", path / "eval"
    if not metrics.is_file() and not eval_dir.is_dir():
        raise UserError(
            f"run directory {path} holds neither metrics.jsonl nor eval/. Fix: pass the train.output_dir of a "
            f"training run, or write evaluation results to {eval_dir}/NAME.json (see alignkit.eval.report.page)"
        )
    run = Run(path)
    if metrics.is_file():
        run.rows = [rec for _, rec in _jsonl(metrics, run.skipped)]
    config = path / "config.yaml"
    if config.is_file():
        try:
            cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
            if not isinstance(cfg, dict):
                raise Bad(f"holds a {type(cfg).__name__}, not a mapping of config sections")
            run.config = cfg
        except (Bad, yaml.YAMLError, OSError, UnicodeDecodeError) as e:
            run.skipped.append((str(config), " ".join(str(e).split())))
    if eval_dir.is_dir():
        for file in sorted(eval_dir.glob("*.json")):
            try:
                run.evals.append(read_eval(file))
            except Bad as e:
                run.skipped.append((str(file), str(e)))
        gens = eval_dir / "generations.jsonl"
        if gens.is_file():
            run.generations = _generations(gens, run.skipped)
    return run


def run_labels(paths: list[Path]) -> list[str]:
    """Run directory names; parent/name where names repeat, then a number where those repeat too."""
    names = [p.resolve().name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = ["/".join(p.resolve().parts[-2:]) for p in paths]
    return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]


def read_eval(file: Path) -> EvalFile:
    """One checked ``eval/*.json`` result; raises ``Bad`` naming what is wrong."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise Bad(f"cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise Bad(f"line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise Bad(f'holds a JSON {_type(data)}, not an object. Fix: write one object with a "kind" field')
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        raise Bad('no "kind" field. Fix: add "kind": "winrate", "overopt" or another name (shown as a table)')
    if kind == "winrate":
        data = _check_winrate(data)
    elif kind == "overopt":
        data = _check_overopt(data)
    return EvalFile(file.name, kind, data)


def _check_winrate(data: dict) -> dict:
    out = _winrate_entry(data, "")
    for key in ("a", "b"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise Bad(f"field '{key}' is {data.get(key)!r}: need the name of policy {key.upper()}")
        out[key] = data[key]
    out["judge"] = str(data.get("judge") or "")
    cats = data.get("per_category") or {}
    if not isinstance(cats, dict):
        raise Bad(f"field 'per_category' is a {_type(cats)}: need an object {{category: win rate fields}}")
    out["per_category"] = {str(c): _winrate_entry(v, f"per_category.{c}.") for c, v in cats.items()}
    out["extra"] = {k: v for k, v in data.items() if k not in WINRATE_FIELDS}  # e.g. a human eval's agreement
    return out


WINRATE_FIELDS = ("kind", "a", "b", "judge", "n", "wins", "ties", "losses", "decisive_rate", "wilson", "rate",
                  "bootstrap", "length_controlled", "per_category")  # fmt: skip


def _winrate_entry(d, prefix: str) -> dict:
    if not isinstance(d, dict):
        raise Bad(f"field '{prefix[:-1]}' is a {_type(d)}: need an object with wins, ties, losses, rate, bootstrap")
    out = {}
    for key in ("wins", "ties", "losses"):
        v = d.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise Bad(f"field '{prefix}{key}' is {v!r}: need a count (an integer >= 0)")
        out[key] = v
    out["rate"] = _number(d, "rate", prefix, required=True)
    out["bootstrap"] = _pair(d, "bootstrap", prefix, required=True)
    out["decisive_rate"] = _number(d, "decisive_rate", prefix)
    out["wilson"] = _pair(d, "wilson", prefix)
    out["length_controlled"] = _number(d, "length_controlled", prefix)
    return out


def _check_overopt(data: dict) -> dict:
    points = data.get("points")
    if not isinstance(points, list) or not points:
        raise Bad(f"field 'points' is {_short(points)}: need a non-empty list of {{method, kl or d, gold, proxy}}")
    out = []
    for i, p in enumerate(points):
        where = f"points[{i}]."
        if not isinstance(p, dict):
            raise Bad(f"'{where[:-1]}' is a {_type(p)}: need an object")
        method = p.get("method")
        if not isinstance(method, str) or not method:
            raise Bad(f"field '{where}method' is {method!r}: need bon, rl or dpo")
        kl, d = _number(p, "kl", where), _number(p, "d", where)
        if d is None:
            if kl is None or not kl >= 0:
                raise Bad(f"'{where[:-1]}' has no 'd' and 'kl' is {p.get('kl')!r}: need d = sqrt(KL) or KL >= 0")
            d = math.sqrt(kl)
        if not (math.isfinite(d) and d >= 0):
            raise Bad(f"field '{where}d' is {d!r}: need a finite number >= 0")
        proxy = p.get("proxy") or {}
        if not isinstance(proxy, dict):
            raise Bad(f"field '{where}proxy' is a {_type(proxy)}: need an object {{proxy name: reward}}")
        n = p.get("n")
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool)):
            raise Bad(f"field '{where}n' is {n!r}: need an integer or null")
        out.append({
            "method": method, "label": str(p.get("label") or ""), "n": n, "kl": kl, "d": d,
            "gold": _number(p, "gold", where), "proxy": {str(k): _number(proxy, k, f"{where}proxy.") for k in proxy},
            "selector": str(p["selector"]) if p.get("selector") else None,
            "kl_sampled": _number(p, "kl_sampled", where),
        })  # fmt: skip
    fits = data.get("fits") or {}
    if not isinstance(fits, dict) or not all(isinstance(f, dict) for f in fits.values()):
        raise Bad(f"field 'fits' is {_short(fits)}: need an object {{target_method: {{alpha, beta, d_peak}}}}")
    for key, fit in fits.items():
        for name in ("alpha", "beta", "d_peak"):
            _number(fit, name, f"fits.{key}.")
    scoring = data.get("scoring") or {}
    if not isinstance(scoring, dict):
        raise Bad(f"field 'scoring' is a {_type(scoring)}: need an object")
    return {**data, "points": out, "fits": fits, "scoring": scoring}


def _number(d: dict, key: str, prefix: str, required: bool = False) -> float | None:
    """A number field as float; null -> NaN where required, else None; missing where required or not a number ->
    ``Bad``."""
    if key not in d and required:
        raise Bad(f"no field '{prefix}{key}'")
    v = d.get(key)
    if v is None:
        return math.nan if required else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Bad(f"field '{prefix}{key}' is {_short(v)}: need a number")
    return float(v)


def _pair(d: dict, key: str, prefix: str, required: bool = False) -> tuple[float, float] | None:
    if key not in d and required:
        raise Bad(f"no field '{prefix}{key}'")
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, list) or len(v) != 2:
        raise Bad(f"field '{prefix}{key}' is {_short(v)}: need an interval [low, high]")
    return _number({"0": v[0]}, "0", f"{prefix}{key}[", True), _number({"1": v[1]}, "1", f"{prefix}{key}[", True)


def _jsonl(path: Path, skipped: list) -> list[tuple[int, dict]]:
    """(line number, record) of each JSON object line; bad lines (and an unreadable file) go to ``skipped``."""
    records = []
    try:
        for source, rec in iter_jsonl(path, on_bad_line=lambda where, why: skipped.append((where, why))):
            if not isinstance(rec, dict):
                skipped.append((source, f"a JSON {_type(rec)}, not an object"))
                continue
            records.append((int(source.rpartition(":")[2]), rec))
    except DataError as e:
        skipped.append((str(path), str(e)))
    return records


def _generations(path: Path, skipped: list) -> list[dict]:
    out = []
    for i, rec in _jsonl(path, skipped):
        prompt = _text(rec.get("prompt"))
        outputs = {c: _text(rec[c]) for c in ("before", "after", "response") if rec.get(c) is not None}
        if "response" not in outputs and rec.get("completion") is not None:
            outputs["response"] = _text(rec["completion"])
        completions = rec.get("completions")
        if "response" not in outputs and isinstance(completions, list) and completions:
            outputs["response"] = "\n---\n".join(_text(c.get("text") if isinstance(c, dict) else c)
                                                 for c in completions)  # fmt: skip
        if prompt is None or not outputs or any(v is None for v in outputs.values()):
            skipped.append((f"{path}:{i}", "need a 'prompt' and 'before'/'after' or 'response' texts"))
            continue
        out.append({"prompt": prompt, "outputs": outputs})
    return out


def _text(v) -> str | None:
    """Text of a prompt or completion: a string, or chat messages as 'role: content' lines."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(m, dict) for m in v):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in v)
    return None


def _type(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number" if isinstance(v, (int, float)) else type(v).__name__
    )


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
