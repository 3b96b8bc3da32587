"""Human A/B evaluation: export anonymized, randomized pairs to a CSV for annotators, import their labels.

``export_pairs`` writes a CSV with columns ``item_id, prompt, response_1, response_2, label, notes`` (rows in a seeded
random order, opaque ids, A shown first in half of the rows) and a JSON key saying which position is A. Keep the key
away from annotators. ``import_labels`` reads one filled CSV per annotator, maps each label back to A's outcome
through the key and computes the same statistics as ``win_rate``, plus inter-annotator agreement (raw and Cohen's
kappa, mean over pairs of annotators) and position bias (the share of decisive labels picking response 1).

Labels (case-insensitive, spaces and hyphens read as ``_``): ``1`` (response 1 is better), ``2``, ``tie``,
``both_bad`` (a tie for the win rate, counted separately). ``left``/``right`` are not accepted: the columns are
numbered, not placed. With several annotators an item's label is the most frequent one; a tie for the top is a tie.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import DataError
from alignkit.eval.judged import Matched, describe
from alignkit.eval.winrate import WinRate, win_rate
from alignkit.stats import wilson_interval

COLUMNS = ("item_id", "prompt", "response_1", "response_2", "label", "notes")
LABELS = ("1", "2", "tie", "both_bad")
KEY_KIND = "alignkit-human-eval-key"
INSTRUCTIONS = (
    "For each row, read the prompt and both responses, then write in the 'label' column: 1 if response_1 is better, "
    "2 if response_2 is better, tie if they are equally good, both_bad if neither is acceptable. Leave a row blank "
    "to skip it; 'notes' is free text. Do not edit item_id, and do not reorder or delete the header row."
)
FIX_LABEL = "Fix: write 1, 2, tie or both_bad in the label column (or leave it blank to skip the item)"


@dataclass
class HumanResult:
    """Human judgments of A vs B; ``win`` is over the labeled items (the consensus label when several annotators)."""

    win: WinRate
    a: str
    b: str
    annotators: list[str]  # the label files, in the order given
    items: int  # items in the key
    unlabeled: int  # items no annotator labeled (excluded from ``win``)
    blank: dict[str, int]  # annotator file -> blank or absent rows
    both_bad: int  # labeled items whose consensus is both_bad (ties in ``win``)
    disagreements: int  # items where the annotators who labeled them did not all agree
    agreement: float | None = None  # raw agreement, mean over annotator pairs; None with one annotator
    kappa: float | None = None  # Cohen's kappa on A/B/tie/both_bad labels, mean over pairs; nan when undefined
    position_1: int = 0  # decisive labels (all annotators) picking response 1
    decisive_labels: int = 0  # labels 1 or 2 (all annotators)
    rows: list[dict] = field(default_factory=list)  # one per labeled item, in A's order

    @property
    def position_1_share(self) -> float:
        return self.position_1 / self.decisive_labels if self.decisive_labels else math.nan


def _write_atomic(path: Path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot be written ({e}). Fix: choose a writable file path") from None
    return path


def export_pairs(
    matched: Matched, csv_path, key_path, seed: int = 0, a_name: str = "A", b_name: str = "B"
) -> tuple[Path, Path]:
    """Write the annotators' CSV and the key (JSON, written first) -> (csv path, key path)."""
    n, rng = len(matched.prompts), random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    a_is = [1] * (n // 2) + [2] * (n - n // 2)  # balanced sides, randomly placed
    rng.shuffle(a_is)
    ids: list[str] = []
    while len(ids) < n:  # a letter first, so spreadsheets never read an id as a number
        item_id = f"q{rng.getrandbits(32):08x}"
        if item_id not in ids:
            ids.append(item_id)
    items = {}  # in A's order
    for i in range(n):
        items[ids[i]] = {
            "a_is": a_is[i],
            "source": matched.sources[i],
            "category": matched.categories[i] if matched.categories is not None else None,
            "len_a": len(matched.a[i]),
            "len_b": len(matched.b[i]),
            "prompt": matched.prompts[i],
        }
    key = {"kind": KEY_KIND, "a": a_name, "b": b_name, "seed": seed, "csv": Path(csv_path).name,
           "labels": list(LABELS), "instructions": INSTRUCTIONS, "items": items}  # fmt: skip
    key_path = _write_atomic(key_path, lambda f: json.dump(key, f, ensure_ascii=False, indent=1))

    def write_csv(f):
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i in order:
            first, second = (matched.a[i], matched.b[i]) if a_is[i] == 1 else (matched.b[i], matched.a[i])
            writer.writerow([ids[i], matched.prompts[i], first, second, "", ""])

    return _write_atomic(csv_path, write_csv), key_path


def read_key(key_path) -> dict:
    """The key written by ``export_pairs``, checked."""
    try:
        key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{key_path}: the key does not exist. Fix: pass the --key written by the export") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{key_path}: not a readable key ({e}). Fix: pass the --key written by the export") from None
    if not isinstance(key, dict) or key.get("kind") != KEY_KIND or not isinstance(key.get("items"), dict):
        raise DataError(f"{key_path}: not a human-eval key. Fix: pass the --key written by `alignkit eval human "
                        "export`")  # fmt: skip
    return key


def normalize_label(value: str | None) -> str | None:
    """``1``, ``2``, ``tie``, ``both_bad``; None when blank; ValueError when anything else."""
    text = (value or "").strip().lower().replace(" ", "_").replace("-", "_")
    if not text:
        return None
    if text in ("1.0", "2.0"):  # a spreadsheet may save numbers as floats
        text = text[0]
    if text not in LABELS:
        raise ValueError(text)
    return text


def read_labels(path, key: dict, key_path) -> tuple[dict[str, str], int]:
    """One annotator's CSV -> ({item_id: label}, blank rows); every problem names file:line."""
    path, labels, lines = Path(path), {}, {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("item_id", "label") if c not in (reader.fieldnames or [])]
            if missing:
                header = ", ".join(reader.fieldnames or [])
                raise DataError(f"{path}:1: column '{missing[0]}' is missing (header: {header}). Fix: keep the "
                                f"header row of the exported CSV ({', '.join(COLUMNS)})")  # fmt: skip
            start = 2
            for row in reader:
                where, start = f"{path}:{start}", reader.line_num + 1
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue  # an empty row, as spreadsheets append
                item_id = (row.get("item_id") or "").strip()
                if item_id not in key["items"]:
                    raise DataError(f"{where}: item_id {item_id!r} is not in the key {key_path}. Fix: import with "
                                    "the key written together with this CSV, and do not edit item_id")  # fmt: skip
                if item_id in lines:
                    raise DataError(f"{where}: item_id {item_id} repeats line {lines[item_id]}. Fix: keep one row "
                                    "per item")  # fmt: skip
                lines[item_id] = where.rsplit(":", 1)[1]
                try:
                    label = normalize_label(row.get("label"))
                except ValueError as e:
                    raise DataError(f"{where}: field 'label' is {e.args[0]!r}. {FIX_LABEL}") from None
                if label is not None:
                    labels[item_id] = label
    except FileNotFoundError:
        raise DataError(f"{path}: does not exist. Fix: pass the filled-in CSV") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e}). Fix: save the sheet as UTF-8 CSV") from None
    return labels, len(key["items"]) - len(labels)


def _in_a_terms(label: str, a_is: int) -> str:
    if label in ("1", "2"):
        return "A" if int(label) == a_is else "B"
    return label


def _consensus(labels: list[str]) -> str:
    """The most frequent label; a tie for the top is a tie."""
    counts = Counter(labels).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else "tie"


def cohen_kappa(x: list[str], y: list[str]) -> float:
    """Cohen's kappa of two raters' labels (``sklearn.metrics.cohen_kappa_score``); nan when undefined (both raters
    always give the one same label)."""
    from sklearn.metrics import cohen_kappa_score

    if len(set(x) | set(y)) < 2:
        return math.nan
    return float(cohen_kappa_score(x, y))


OUTCOME = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}


def import_labels(csv_paths: list, key_path, seed: int = 0) -> HumanResult:
    """Labels from one CSV per annotator + the key -> the win rate of A and agreement statistics."""
    key = read_key(key_path)
    paths = [str(p) for p in csv_paths]
    if not paths:
        raise DataError("no label files. Fix: pass the filled-in CSV of at least one annotator")
    if len(set(paths)) != len(paths):
        raise DataError(f"{next(p for p in paths if paths.count(p) > 1)} is given twice. Fix: one file per annotator")
    per_file, blank = {}, {}
    for p in paths:
        per_file[p], blank[p] = read_labels(p, key, key_path)
    items = key["items"]
    a_terms = {p: {i: _in_a_terms(lab, items[i]["a_is"]) for i, lab in got.items()} for p, got in per_file.items()}
    rows, disagreements = [], 0
    for item_id, info in items.items():
        given = {p: a_terms[p][item_id] for p in paths if item_id in a_terms[p]}
        if not given:
            continue
        consensus = _consensus(list(given.values()))
        disagreements += len(set(given.values())) > 1
        rows.append({"item_id": item_id, "source": info["source"], "prompt": info.get("prompt"),
                     "category": info.get("category"), "labels": given, "label": consensus,
                     "outcome": OUTCOME[consensus], "length_diff": info["len_a"] - info["len_b"]})  # fmt: skip
    if not rows:
        raise DataError(f"{', '.join(paths)}: no item is labeled. {FIX_LABEL}")
    cats = [r["category"] for r in rows]
    categories = [str(c) for c in cats] if all(c is not None for c in cats) else None
    win = win_rate([r["outcome"] for r in rows], [r["length_diff"] for r in rows], categories, seed=seed)
    agreements, kappas = [], []
    for p, q in itertools.combinations(paths, 2):
        common = [i for i in items if i in a_terms[p] and i in a_terms[q]]
        if common:
            x, y = [a_terms[p][i] for i in common], [a_terms[q][i] for i in common]
            agreements.append(sum(u == v for u, v in zip(x, y)) / len(common))
            kappas.append(cohen_kappa(x, y))
    raw = [lab for labels in per_file.values() for lab in labels.values()]
    return HumanResult(
        win=win, a=str(key.get("a", "A")), b=str(key.get("b", "B")), annotators=paths, items=len(items),
        unlabeled=len(items) - len(rows), blank=blank, both_bad=sum(r["label"] == "both_bad" for r in rows),
        disagreements=disagreements,
        agreement=sum(agreements) / len(agreements) if agreements else None,
        kappa=sum(kappas) / len(kappas) if kappas else None,
        position_1=raw.count("1"), decisive_labels=raw.count("1") + raw.count("2"), rows=rows,
    )  # fmt: skip


def describe_human(result: HumanResult) -> list[str]:
    """Human-readable lines: the win rate (as ``describe``), then coverage, agreement and position bias."""
    k = len(result.annotators)
    lines = describe(result.win, result.a, result.b)
    lines.append(f"judged by {k} annotator{'s' * (k != 1)}; {result.items - result.unlabeled} of {result.items} items "
                 f"labeled, {result.unlabeled} unlabeled (excluded)")  # fmt: skip
    if k > 1 or any(result.blank.values()):
        lines.append("blank rows: " + ", ".join(f"{Path(p).name} {n}" for p, n in result.blank.items()))
    lines.append(f"both bad (counted as ties): {result.both_bad} of {result.win.n} labeled items")
    if result.agreement is not None:
        mean = " (mean over annotator pairs)" if k > 2 else ""
        lines.append(f"agreement{mean}: raw {result.agreement:.3f}, Cohen's kappa {result.kappa:.3f}; "
                     f"{result.disagreements} items with disagreement (consensus: the most frequent label, else "
                     "tie)")  # fmt: skip
    if result.decisive_labels:
        low, high = wilson_interval(result.position_1, result.decisive_labels)
        lines.append(f"position bias: response 1 chosen in {result.position_1} of {result.decisive_labels} decisive "
                     f"labels ({result.position_1_share:.3f}, 95% Wilson interval [{low:.3f}, {high:.3f}]; 0.5 = "
                     "none)")  # fmt: skip
    return lines
