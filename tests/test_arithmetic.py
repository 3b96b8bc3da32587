"""The shipped arithmetic word problems: correct answers (recomputed here from the operands), byte-for-byte
determinism, disjoint train/held-out sets, answers the math verifier reads back, counts and category shares."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from alignkit.data import arithmetic
from alignkit.data.readers import builtin_path, read_records
from alignkit.rewards.verifiers.math import extract_answer, extract_gold, grade

# every template's answer, written independently of the generator
FORMULAS = {
    ("add", "shopping"): lambda a, b: a + b,
    ("add", "ages"): lambda a, b: a + b,
    ("add", "distance"): lambda a, b: a + b,
    ("add", "money"): lambda a, b: a + b,
    ("add", "collection"): lambda a, b: a + b,
    ("add", "reading"): lambda a, b: a + b,
    ("sub", "shopping"): lambda a, b: a - b,
    ("sub", "ages"): lambda a, b: a - b,
    ("sub", "eating"): lambda a, b: a - b,
    ("sub", "distance"): lambda a, b: a - b,
    ("sub", "compare"): lambda a, b: a - b,
    ("sub", "bus"): lambda a, b: a - b,
    ("mul", "baking"): lambda a, b: a * b,
    ("mul", "shopping"): lambda a, b: a * b,
    ("mul", "boxes"): lambda a, b: a * b,
    ("mul", "time"): lambda a, b: a * b,
    ("mul", "distance"): lambda a, b: a * b,
    ("mul", "legs"): lambda a, b: a * b,
    ("div", "sharing"): lambda a, b: a / b,
    ("div", "teams"): lambda a, b: a / b,
    ("div", "baking"): lambda a, b: a / b,
    ("div", "money"): lambda a, b: a / b,
    ("div", "distance"): lambda a, b: a / b,
    ("div", "time"): lambda a, b: a / b,
    ("two_step", "shopping"): lambda a, b, c: a * b - c,
    ("two_step", "money"): lambda a, b, c: a - b + c,
    ("two_step", "collection"): lambda a, b, c: a + b - c,
    ("two_step", "baking"): lambda a, b, c: (a + b) * c,
    ("two_step", "sharing"): lambda a, b, c: (a + b) / c,
    ("two_step", "ages"): lambda a, b, c: a + b + c,
}


@pytest.fixture(scope="module")
def generated():
    return arithmetic.splits()


def shipped(name: str) -> list[dict]:
    return [json.loads(line) for line in builtin_path(name).read_text(encoding="utf-8").splitlines()]


def test_every_template_has_an_independent_formula():
    assert {(t.category, t.name) for t in arithmetic.TEMPLATES} == set(FORMULAS)


def test_answers_are_correct_whole_positive_and_operands_are_in_the_text(generated):
    for problem in generated[0] + generated[1]:
        expected = FORMULAS[problem.category, problem.template](**problem.operands)
        assert expected == problem.answer and float(expected).is_integer() and expected > 0, problem
        numbers = [int(x) for x in re.findall(r"\d+", problem.prompt.split("\n")[0])]
        assert numbers == list(problem.operands.values()), problem  # operands appear, in order, and nothing else


def test_regenerating_gives_the_shipped_files_byte_for_byte(tmp_path):
    paths = arithmetic.write(tmp_path)
    assert [p.name for p in paths] == [arithmetic.TRAIN_FILE, arithmetic.HELDOUT_FILE, arithmetic.TOOLS_TRAIN_FILE,
                                       arithmetic.TOOLS_HELDOUT_FILE, arithmetic.PHRASINGS_TRAIN_FILE,
                                       arithmetic.PHRASINGS_HELDOUT_FILE, arithmetic.STEPS_FILE]  # fmt: skip
    for path in paths:
        assert path.read_bytes() == builtin_path(path.name).read_bytes(), (
            f"{path.name} differs from the shipped file. Fix: python -m alignkit.data.arithmetic --out-dir "
            "src/alignkit/resources"
        )


def test_counts_categories_and_disjoint_sets():
    train, heldout = shipped(arithmetic.TRAIN_FILE), shipped(arithmetic.HELDOUT_FILE)
    assert len(train) == arithmetic.N_TRAIN == 2000 and len(heldout) == arithmetic.N_HELDOUT == 300
    train_prompts, heldout_prompts = {r["prompt"] for r in train}, {r["prompt"] for r in heldout}
    assert len(train_prompts) == len(train) and len(heldout_prompts) == len(heldout)  # no duplicates within a set
    assert not train_prompts & heldout_prompts
    for records in (train, heldout):
        counts = Counter(r["category"] for r in records)
        assert set(counts) == set(arithmetic.CATEGORIES) and len(set(counts.values())) == 1  # equal shares
        assert all(set(r) == {"prompt", "answer", "category"} for r in records)
        assert all(r["prompt"].endswith("\n" + arithmetic.INSTRUCTION) for r in records)


def test_tool_sets_hold_out_whole_templates_and_chains_are_consistent():
    """The tool demo's sets: training problems from 20 templates, held-out problems from the other 10 only (every
    category keeps 4 and loses 2); the steps environment's chains give their recorded answers."""
    from alignkit.rewards.environments import StepsEnvironment

    train, heldout = arithmetic.template_splits(400, 100)
    assert len(arithmetic.HELDOUT_TEMPLATES) == 10
    assert {(p.category, p.template) for p in heldout} == set(arithmetic.HELDOUT_TEMPLATES)
    assert not {(p.category, p.template) for p in train} & arithmetic.HELDOUT_TEMPLATES
    assert len({(p.category, p.template) for p in train}) == 20
    assert [json.loads(x) for x in builtin_path(arithmetic.TOOLS_HELDOUT_FILE).read_text().splitlines()][:3] == [
        p.record() for p in arithmetic.template_splits()[1][:3]]  # fmt: skip
    for record in arithmetic.chain_records(50, seed=3):
        env = StepsEnvironment()
        env.reset(record)
        assert env.values[-1] == int(record["answer"]) and all(0 <= v <= 999 * 9 for v in env.values)


def test_every_rephrasing_keeps_the_fields_and_the_answer():
    """Each scenario's three phrasings use the same fields; filled with the same operands they state the same
    numbers (in any order) and the problem keeps its independently computed answer."""
    import random
    import string

    from alignkit.data.arithmetic_phrasings import REPHRASINGS

    assert set(REPHRASINGS) == set(FORMULAS)
    fields = lambda text: {f for _, f, _, _ in string.Formatter().parse(text) if f}  # noqa: E731
    for t in arithmetic.TEMPLATES:
        texts = [arithmetic.phrased(t, k).text for k in range(3)]
        operands = set(t.ranges)
        assert len(set(texts)) == 3, t.name
        assert all(fields(x) <= fields(t.text) and fields(x) & operands == operands for x in texts), t.name
        rng = random.Random(0)
        for k in range(3):
            problem = arithmetic.make_problem(arithmetic.phrased(t, k), rng)
            numbers = sorted(int(x) for x in re.findall(r"\d+", problem.prompt.split("\n")[0]))
            assert numbers == sorted(problem.operands.values()), problem.prompt
            assert problem.answer == FORMULAS[t.category, t.name](**problem.operands)


def test_phrasing_sets_hold_out_whole_scenarios_and_whole_phrasings():
    """The GRPO demo's sets: training sees 40 phrasings; ``new_phrasing`` problems use the other phrasing of each of
    the 20 trained scenarios, ``new_scenario`` problems only the 10 held-out scenarios; 100 of each kind, none a
    training prompt."""
    t = arithmetic.phrasing_templates()
    assert [len(t[k]) for k in ("train", "new_phrasing", "new_scenario")] == [40, 20, 30]
    texts = {k: {x.text for x in v} for k, v in t.items()}
    assert not texts["train"] & texts["new_phrasing"] and not texts["train"] & texts["new_scenario"]
    scenario = lambda x: (x.category, x.name.split("/")[0])  # noqa: E731
    assert {scenario(x) for x in t["new_scenario"]} == set(arithmetic.HELDOUT_TEMPLATES)
    assert {scenario(x) for x in t["new_phrasing"]} == {scenario(x) for x in t["train"]}
    assert Counter(x.name[-1] for x in t["new_phrasing"]) == {"0": 7, "1": 7, "2": 6}  # no style held out wholesale
    train, heldout = shipped(arithmetic.PHRASINGS_TRAIN_FILE), shipped(arithmetic.PHRASINGS_HELDOUT_FILE)
    assert len(train) == 2000 and Counter(r["split"] for r in heldout) == {k: 100 for k in arithmetic.SPLITS}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    trained = {f"{x.category}/{x.name}" for x in t["train"]}
    for r in heldout:
        assert (r["template"] in trained) == (r["split"] == "in_template"), r


def test_every_shipped_answer_is_read_back_by_the_math_verifier():
    for name in (arithmetic.TRAIN_FILE, arithmetic.HELDOUT_FILE, arithmetic.PHRASINGS_HELDOUT_FILE):
        for source, record in read_records(f"builtin:{name}"):
            answer = record["answer"]
            assert extract_gold(answer) == answer and answer.isdigit(), source
            assert grade(f"12 + 3 = 15.\nAnswer: {answer}", answer).reward == 1.0, source
            assert grade(f"Answer: {int(answer) + 1}", answer).reward == 0.0, source
            assert extract_answer(f"So the total is {answer}.") == answer, source


def test_seed_changes_the_problems():
    assert [p.prompt for p in arithmetic.generate(20, seed=1)] != [p.prompt for p in arithmetic.generate(20, seed=2)]
    assert [p.prompt for p in arithmetic.generate(20, seed=1)] == [p.prompt for p in arithmetic.generate(20, seed=1)]
