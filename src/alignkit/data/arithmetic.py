"""Project-written arithmetic word problems (grades 1-4) for online RL: a seeded generator and the shipped sets.

Each problem is one of the templates below (shopping, sharing, ages, distances, time, money, baking, ...) filled with
seeded operands; categories are operations: ``add``, ``sub``, ``mul``, ``div`` (whole results) and ``two_step``.
Records are ``{"prompt", "answer", "category"}``; the prompt ends with ``INSTRUCTION``.

    python -m alignkit.data.arithmetic --out-dir src/alignkit/resources

writes ``arithmetic_train.jsonl`` and ``arithmetic_heldout.jsonl`` (``builtin:arithmetic_*.jsonl``), the tool demo's
``arithmetic_tools_*`` (whole templates held out) and the GRPO demo's ``arithmetic_phrasings_*`` (three phrasings per
scenario; whole scenarios and whole phrasings held out), byte-identical on every run; no held-out prompt is also a
training prompt.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from alignkit.data.arithmetic_phrasings import REPHRASINGS

INSTRUCTION = "Give the final answer as a number after 'Answer:'."
CATEGORIES = ("add", "sub", "mul", "div", "two_step")
TRAIN_FILE, HELDOUT_FILE = "arithmetic_train.jsonl", "arithmetic_heldout.jsonl"
SEED, N_TRAIN, N_HELDOUT = 1234, 2000, 300

NAMES = "Ava Ben Cara Dan Ella Finn Gia Hugo Ivy Jack Kim Leo Mia Noah Olga Pablo Rosa Sam Tara Umar Vera Zoe".split()
FRUITS = "apples oranges pears plums lemons peaches".split()
TOYS = "marbles stickers cards balloons crayons blocks".split()


@dataclass(frozen=True)
class Template:
    """A word problem: ``text`` (``str.format`` over ``name``/``thing`` and the operands), operand ranges, the
    answer from the operands, and an optional constraint the operands must meet."""

    category: str
    name: str
    text: str
    ranges: dict[str, tuple[int, int]]
    answer: Callable[..., int]
    ok: Callable[..., bool] = lambda **_: True
    things: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    """One generated problem: the record fields plus the template and operands it came from."""

    prompt: str
    answer: int
    category: str
    template: str
    operands: dict[str, int]

    def record(self) -> dict:
        return {"prompt": self.prompt, "answer": str(self.answer), "category": self.category}


T = Template
TEMPLATES = (
    # ---- addition
    T("add", "shopping", "{name} buys {a} {thing} at the market and {b} more at the shop. How many {thing} does "
      "{name} buy in all?", {"a": (2, 15), "b": (2, 9)}, lambda a, b: a + b, things=tuple(FRUITS)),
    T("add", "ages", "{name} is {a} years old. {name}'s cousin is {b} years older than {name}. How old is the "
      "cousin?", {"a": (4, 12), "b": (1, 9)}, lambda a, b: a + b),
    T("add", "distance", "{name} walks {a} blocks to the park and then {b} blocks to the library. How many blocks "
      "does {name} walk?", {"a": (2, 12), "b": (2, 9)}, lambda a, b: a + b),
    T("add", "money", "{name} has {a} dollars and earns {b} dollars for washing a car. How many dollars does {name} "
      "have now?", {"a": (2, 20), "b": (2, 9)}, lambda a, b: a + b),
    T("add", "collection", "{name} has {a} {thing}. A friend gives {name} {b} more {thing}. How many {thing} does "
      "{name} have now?", {"a": (2, 20), "b": (2, 9)}, lambda a, b: a + b, things=tuple(TOYS)),
    T("add", "reading", "{name} reads {a} pages in the morning and {b} pages in the evening. How many pages does "
      "{name} read?", {"a": (2, 15), "b": (2, 9)}, lambda a, b: a + b),
    # ---- subtraction
    T("sub", "shopping", "{name} has {a} dollars and buys a book for {b} dollars. How many dollars are left?",
      {"a": (5, 20), "b": (1, 9)}, lambda a, b: a - b, lambda a, b: b < a),
    T("sub", "ages", "{name} is {a} years old. {name}'s brother is {b} years younger. How old is the brother?",
      {"a": (6, 15), "b": (1, 5)}, lambda a, b: a - b),
    T("sub", "eating", "There are {a} {thing} in a basket. {name} takes {b} of them. How many {thing} are left in "
      "the basket?", {"a": (5, 20), "b": (1, 9)}, lambda a, b: a - b, lambda a, b: b < a, tuple(FRUITS)),
    T("sub", "distance", "A trail is {a} kilometers long. {name} has already hiked {b} kilometers. How many "
      "kilometers are left?", {"a": (5, 20), "b": (1, 9)}, lambda a, b: a - b, lambda a, b: b < a),
    T("sub", "compare", "{name} has {a} {thing} and a friend has {b} {thing}. How many more {thing} does {name} "
      "have?", {"a": (5, 20), "b": (1, 9)}, lambda a, b: a - b, lambda a, b: b < a, tuple(TOYS)),
    T("sub", "bus", "A bus has {a} people on it. At the next stop {b} people get off. How many people are on the "
      "bus now?", {"a": (5, 20), "b": (1, 9)}, lambda a, b: a - b, lambda a, b: b < a),
    # ---- multiplication
    T("mul", "baking", "{name} bakes {a} trays of cookies. Each tray holds {b} cookies. How many cookies does "
      "{name} bake?", {"a": (2, 5), "b": (2, 6)}, lambda a, b: a * b),
    T("mul", "shopping", "Pencils cost {a} dollars each. {name} buys {b} pencils. How many dollars does {name} "
      "pay?", {"a": (2, 5), "b": (2, 5)}, lambda a, b: a * b),
    T("mul", "boxes", "There are {a} boxes with {b} {thing} in each box. How many {thing} are there in all?",
      {"a": (2, 5), "b": (2, 6)}, lambda a, b: a * b, things=tuple(TOYS)),
    T("mul", "time", "{name} practices piano for {a} minutes every day. How many minutes does {name} practice in "
      "{b} days?", {"a": (2, 10), "b": (2, 5)}, lambda a, b: a * b),
    T("mul", "distance", "{name} runs {a} laps around a track. Each lap is {b} meters. How many meters does {name} "
      "run?", {"a": (2, 5), "b": (10, 50)}, lambda a, b: a * b, lambda a, b: b % 10 == 0),
    T("mul", "legs", "A farm has {a} cows. Each cow has {b} legs. How many legs do the cows have in all?",
      {"a": (2, 6), "b": (4, 4)}, lambda a, b: a * b),
    # ---- division (whole results): the dividend is a small multiple of the divisor
    T("div", "sharing", "{name} shares {a} {thing} equally among {b} friends. How many {thing} does each friend "
      "get?", {"a": (4, 30), "b": (2, 5)}, lambda a, b: a // b, lambda a, b: a % b == 0 and 2 <= a // b <= 6,
      tuple(FRUITS)),
    T("div", "teams", "{a} children split into teams of {b}. How many teams are there?",
      {"a": (4, 30), "b": (2, 5)}, lambda a, b: a // b, lambda a, b: a % b == 0 and 2 <= a // b <= 6),
    T("div", "baking", "{name} bakes {a} muffins and puts {b} muffins in each bag. How many bags does {name} fill?",
      {"a": (4, 30), "b": (2, 5)}, lambda a, b: a // b, lambda a, b: a % b == 0 and 2 <= a // b <= 6),
    T("div", "money", "{name} pays {a} dollars for {b} notebooks that all cost the same. How many dollars does one "
      "notebook cost?", {"a": (4, 30), "b": (2, 5)}, lambda a, b: a // b,
      lambda a, b: a % b == 0 and 2 <= a // b <= 6),
    T("div", "distance", "A road is {a} kilometers long. It is split into {b} equal parts. How many kilometers long "
      "is each part?", {"a": (4, 30), "b": (2, 5)}, lambda a, b: a // b, lambda a, b: a % b == 0 and 2 <= a // b <= 6),
    T("div", "time", "{name} has {a} minutes to do {b} puzzles and spends the same time on each. How many minutes "
      "does each puzzle take?", {"a": (4, 30), "b": (2, 5)}, lambda a, b: a // b,
      lambda a, b: a % b == 0 and 2 <= a // b <= 6),
    # ---- two steps
    T("two_step", "shopping", "{name} buys {a} packs of {thing} with {b} {thing} in each pack, then eats {c} of "
      "them. How many {thing} are left?", {"a": (2, 3), "b": (2, 5), "c": (1, 3)}, lambda a, b, c: a * b - c,
      things=tuple(FRUITS)),
    T("two_step", "money", "{name} has {a} dollars, spends {b} dollars on lunch and then earns {c} dollars. How many "
      "dollars does {name} have now?", {"a": (5, 15), "b": (1, 5), "c": (1, 5)}, lambda a, b, c: a - b + c),
    T("two_step", "collection", "{name} has {a} {thing}, gets {b} more and then gives {c} to a friend. How many "
      "{thing} does {name} have now?", {"a": (3, 12), "b": (1, 5), "c": (1, 5)}, lambda a, b, c: a + b - c,
      lambda a, b, c: c < a + b, tuple(TOYS)),
    T("two_step", "baking", "{name} bakes {a} cakes in the morning and {b} cakes in the afternoon, and cuts every cake "
      "into {c} slices. How many slices are there?", {"a": (1, 3), "b": (1, 3), "c": (2, 4)},
      lambda a, b, c: (a + b) * c),
    T("two_step", "sharing", "{name} has {a} stickers and buys {b} more, then shares them equally with {c} friends. "
      "How many stickers does each friend get?", {"a": (2, 12), "b": (2, 8), "c": (2, 4)},
      lambda a, b, c: (a + b) // c, lambda a, b, c: (a + b) % c == 0 and (a + b) // c <= 6),
    T("two_step", "ages", "{name} is {a} years old. {name}'s sister is {b} years older. How old will the sister be in "
      "{c} years?", {"a": (3, 10), "b": (1, 5), "c": (1, 5)}, lambda a, b, c: a + b + c),
)  # fmt: skip
del T


def make_problem(template: Template, rng: random.Random) -> Problem:
    """Draw operands for ``template`` until its constraint holds, and fill it in."""
    while True:
        operands = {k: rng.randint(lo, hi) for k, (lo, hi) in template.ranges.items()}
        if template.ok(**operands):
            break
    words = {"name": rng.choice(NAMES), "thing": rng.choice(template.things) if template.things else ""}
    text = template.text.format(**words, **operands)
    return Problem(f"{text}\n{INSTRUCTION}", template.answer(**operands), template.category, template.name, operands)


def generate(
    n: int, seed: int = SEED, exclude: set[str] = frozenset(), templates: tuple[Template, ...] = TEMPLATES
) -> list[Problem]:
    """``n`` distinct problems from ``templates``, categories in turn (equal shares), templates and operands from
    ``seed``; prompts in ``exclude`` are skipped."""
    rng = random.Random(seed)
    by_category = {c: [t for t in templates if t.category == c] for c in CATEGORIES}
    seen, out = set(exclude), []
    while len(out) < n:
        problem = make_problem(rng.choice(by_category[CATEGORIES[len(out) % len(CATEGORIES)]]), rng)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            out.append(problem)
    return out


def splits(n_train: int = N_TRAIN, n_heldout: int = N_HELDOUT, seed: int = SEED) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out): the held-out set first, then training problems that differ from every held-out prompt."""
    heldout = generate(n_heldout, seed)
    train = generate(n_train, seed + 1, exclude={p.prompt for p in heldout})
    return train, heldout


# Whole templates the tool demo never trains on: the last two of each category (10 of 30). Its headline accuracy is
# on these, so a gain must carry over to phrasings the training did not show.
HELDOUT_TEMPLATES = frozenset((c, t.name) for c in CATEGORIES for t in [t for t in TEMPLATES if t.category == c][-2:])
TOOLS_TRAIN_FILE, TOOLS_HELDOUT_FILE, N_TOOLS_HELDOUT = (
    "arithmetic_tools_train.jsonl",
    "arithmetic_tools_heldout.jsonl",
    200,
)


def template_splits(n_train: int = N_TRAIN, n_heldout: int = N_TOOLS_HELDOUT, seed: int = SEED):
    """(train, held-out) with whole templates held out: training problems come from the 20 templates outside
    ``HELDOUT_TEMPLATES``, held-out problems only from the 10 inside it."""
    inside = tuple(t for t in TEMPLATES if (t.category, t.name) in HELDOUT_TEMPLATES)
    outside = tuple(t for t in TEMPLATES if (t.category, t.name) not in HELDOUT_TEMPLATES)
    return generate(n_train, seed + 2, templates=outside), generate(n_heldout, seed + 3, templates=inside)


# The GRPO demo's split: three phrasings per scenario (``arithmetic_phrasings.REPHRASINGS``). Held out whole: the
# scenarios of ``HELDOUT_TEMPLATES`` (all their phrasings: new wording of a new situation) and, of every other
# scenario, one phrasing (new wording of a situation trained on). Training sees the 40 remaining phrasings.
PHRASINGS_TRAIN_FILE, PHRASINGS_HELDOUT_FILE, N_PHRASINGS_HELDOUT = (
    "arithmetic_phrasings_train.jsonl",
    "arithmetic_phrasings_heldout.jsonl",
    100,
)
SPLITS = ("in_template", "new_phrasing", "new_scenario")  # what a held-out problem shares with the training


def phrased(template: Template, k: int) -> Template:
    """``template`` in its phrasing ``k`` (0 = its own text), named ``scenario/k``."""
    texts = (template.text, *REPHRASINGS[(template.category, template.name)])
    return replace(template, text=texts[k], name=f"{template.name}/{k}")


def phrasing_templates() -> dict[str, tuple[Template, ...]]:
    """``train``, ``new_phrasing`` and ``new_scenario`` templates (a scenario in one phrasing each). Of the 20
    trained scenarios, scenario i holds out its phrasing i mod 3, so no wording style is held out wholesale."""
    seen = [t for t in TEMPLATES if (t.category, t.name) not in HELDOUT_TEMPLATES]
    out: dict[str, list[Template]] = {"train": [], "new_phrasing": [], "new_scenario": []}
    for i, t in enumerate(seen):
        for k in range(3):
            out["new_phrasing" if k == i % 3 else "train"].append(phrased(t, k))
    out["new_scenario"] = [phrased(t, k) for t in TEMPLATES if (t.category, t.name) in HELDOUT_TEMPLATES
                           for k in range(3)]  # fmt: skip
    return {k: tuple(v) for k, v in out.items()}


def phrasing_splits(
    n_train: int = N_TRAIN, n_each: int = N_PHRASINGS_HELDOUT, seed: int = SEED
) -> tuple[list[Problem], list[tuple[str, Problem]]]:
    """(train, held-out): training problems from the trained phrasings; ``n_each`` held-out problems per ``SPLITS``
    kind, as (kind, problem). No held-out prompt is a training prompt."""
    t = phrasing_templates()
    in_template = generate(n_each, seed + 4, templates=t["train"])
    train = generate(n_train, seed + 5, exclude={p.prompt for p in in_template}, templates=t["train"])
    heldout = [("in_template", p) for p in in_template]
    heldout += [("new_phrasing", p) for p in generate(n_each, seed + 6, templates=t["new_phrasing"])]
    heldout += [("new_scenario", p) for p in generate(n_each, seed + 7, templates=t["new_scenario"])]
    return train, heldout


def heldout_record(kind: str, problem: Problem) -> dict:
    """A held-out record: the problem plus ``split`` (a ``SPLITS`` kind) and ``template`` (category/scenario/k)."""
    return {**problem.record(), "split": kind, "template": f"{problem.category}/{problem.template}"}


STEP_OPS = ("+", "-", "*", "//")
STEPS_FILE = "arithmetic_steps.jsonl"


def chain_records(n: int, seed: int = SEED, steps: tuple[int, int] = (2, 4)) -> list[dict]:
    """Records of the ``arithmetic_steps`` environment: ``start`` and ``steps`` ([op, number], whole results that
    stay between 0 and 999), with the final ``answer``."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        value = start = rng.randint(2, 30)
        chain = []
        for _ in range(rng.randint(*steps)):
            op = rng.choice(STEP_OPS)
            v = rng.randint(2, 9) if op in "*//" else rng.randint(1, 30)
            if op == "//" and value % v:
                op, v = "+", v
            if op == "-" and value - v < 0:
                op = "+"
            value = {"+": value + v, "-": value - v, "*": value * v, "//": value // v}[op]
            chain.append([op, v])
        if value <= 999:
            out.append({"prompt": f"Start with {start}.", "start": start, "steps": chain, "answer": str(value)})
    return out


def to_jsonl(problems: list[Problem]) -> str:
    return "".join(json.dumps(p.record(), ensure_ascii=False) + "\n" for p in problems)


def write(out_dir: str | Path) -> list[Path]:
    """Write the train and held-out files into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, problems in [*zip((TRAIN_FILE, HELDOUT_FILE), splits()),
                           *zip((TOOLS_TRAIN_FILE, TOOLS_HELDOUT_FILE), template_splits())]:  # fmt: skip
        path = out_dir / name
        path.write_text(to_jsonl(problems), encoding="utf-8")
        paths.append(path)
    train, heldout = phrasing_splits()
    held_text = "".join(json.dumps(heldout_record(*x)) + "\n" for x in heldout)
    for name, text in [(PHRASINGS_TRAIN_FILE, to_jsonl(train)), (PHRASINGS_HELDOUT_FILE, held_text)]:
        (out_dir / name).write_text(text, encoding="utf-8")
        paths.append(out_dir / name)
    path = out_dir / STEPS_FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in chain_records(500)), encoding="utf-8")
    return [*paths, path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the arithmetic word-problem train and held-out sets.")
    parser.add_argument("--out-dir", required=True, help="Directory for arithmetic_train/heldout.jsonl")
    for path in write(parser.parse_args(argv).out_dir):
        print(f"wrote {path} ({sum(1 for _ in path.open())} problems)")


if __name__ == "__main__":
    main()
