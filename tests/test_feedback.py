"""Thumbs-up/down feedback: cleaning rules, pairs, split by prompt, bad input, and the `alignkit data` command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from helpers import write_jsonl

from alignkit.data import read_records, to_pairwise
from alignkit.data.feedback import clean_feedback, feedback_to_pairs, split_by_prompt
from alignkit.data.jsonl import write_jsonl as write_atomic
from alignkit.errors import DataError


def fb(prompt, completion, label, user=None, **extra) -> dict:
    rec = {"prompt": prompt, "completion": completion, "label": label, **extra}
    return rec if user is None else {**rec, "user_id": user}


def sourced(records: list[dict]) -> list[tuple[str, dict]]:
    return [(f"f.jsonl:{i + 1}", r) for i, r in enumerate(records)]


def rated(user, ups: int, downs: int) -> list[dict]:
    """``ups`` thumbs up and ``downs`` thumbs down by ``user``, each on its own prompt and long response."""
    labels = [True] * ups + [False] * downs
    return [fb(f"{user} question {i}?", f"A long enough answer number {i}.", lab, user) for i, lab in enumerate(labels)]


def msgs(role, *contents):
    return [{"role": role, "content": c} for c in contents]


# ============================================================================================ clean


def test_rater_bias_thresholds_are_inclusive_and_only_judge_raters_with_enough_ratings():
    records = (
        rated("low", 1, 9)  # rate exactly 0.1: kept
        + rated("high", 9, 1)  # exactly 0.9: kept
        + rated("yes", 5, 0)  # 1.0 with 5 ratings: removed
        + rated(7, 0, 6)  # 0.0, an integer user_id: removed
        + rated("few", 4, 0)  # 1.0 but only 4 ratings: kept
        + [fb(f"anonymous {i}?", "A long enough answer here.", True) for i in range(10)]  # no user_id: kept
    )
    kept, report = clean_feedback(sourced(records))
    users = Counter(rec.get("user_id") for _, rec in kept)
    assert users == {"low": 10, "high": 10, "few": 4, None: 10}
    assert [(r.user_id, r.rate, r.count) for r in report.raters] == [("yes", 1.0, 5), (7, 0.0, 6)]
    assert len(report.removed["rater_bias"]) == 11
    assert report.removed["duplicate"] == report.removed["too_short"] == []


def test_rater_bias_with_custom_thresholds():
    kept, report = clean_feedback(sourced(rated("a", 3, 7) + rated("b", 2, 1)), min_rate=0.4, min_ratings=3)
    assert {rec["user_id"] for _, rec in kept} == {"b"}
    assert [r.user_id for r in report.raters] == ["a"]


def test_duplicates_keep_the_first_and_ignore_key_order_and_label():
    first = fb(msgs("user", "Hi?"), msgs("assistant", "Hello there, friend."), True, "u1", id=1)
    same = fb([{"content": "Hi?", "role": "user"}], [{"content": "Hello there, friend.", "role": "assistant"}], False)
    other = fb(msgs("user", "Hi?"), msgs("assistant", "Good day to you too."), False, "u2")
    kept, report = clean_feedback(sourced([first, same, other, dict(first)]))
    assert kept == [("f.jsonl:1", first), ("f.jsonl:3", other)]
    assert report.removed["duplicate"] == ["f.jsonl:2", "f.jsonl:4"]


def test_records_of_removed_raters_do_not_count_as_seen_for_duplicates():
    biased = rated("yes", 5, 0)
    honest = fb(biased[0]["prompt"], biased[0]["completion"], False, "u2")
    kept, report = clean_feedback(sourced(biased + [honest]))
    assert kept == [("f.jsonl:6", honest)]
    assert report.removed["duplicate"] == []


def test_short_responses_text_and_chat_messages():
    records = [
        fb("Q1?", "   Too short   ", True),  # 9 characters once stripped
        fb("Q2?", "Ten chars!", True),  # exactly 10: kept
        fb(msgs("user", "Q3?"), msgs("assistant", "  Hi there "), True),  # 8 characters
        fb(msgs("user", "Q4?"), msgs("assistant", "Hello", "world!!"), False),  # joined: 13 characters
    ]
    kept, report = clean_feedback(sourced(records))
    assert [s for s, _ in kept] == ["f.jsonl:2", "f.jsonl:4"]
    assert report.removed["too_short"] == ["f.jsonl:1", "f.jsonl:3"]
    kept, _ = clean_feedback(sourced(records), min_chars=20)
    assert kept == []


def test_report_counts_examples_and_lines():
    records = rated("yes", 6, 0) + rated("u", 3, 3) + [rated("u", 3, 3)[0], fb("Q?", "Short.", True, "u")]
    kept, report = clean_feedback(sourced(records))
    assert (report.total, report.kept) == (14, 6)
    assert {rule: len(s) for rule, s in report.removed.items()} == {"rater_bias": 6, "duplicate": 1, "too_short": 1}
    assert report.removed["duplicate"] == ["f.jsonl:13"] and report.removed["too_short"] == ["f.jsonl:14"]
    lines = report.lines()
    assert lines[0] == "read 14 records, kept 6"
    assert lines[1].startswith("rater_bias: removed 6 (raters with >= 5 ratings approving under 0.1 or over 0.9)")
    assert "e.g. f.jsonl:1, f.jsonl:2, f.jsonl:3, ..." in lines[1]
    assert lines[2].endswith("e.g. f.jsonl:13") and "under 10 characters" in lines[3]
    assert lines[4] == "removed rater 'yes': approval rate 1.00 over 6 ratings"


def test_other_fields_are_kept_and_plain_dicts_work():
    rec = fb("Q?", "A long enough answer.", True, "u", source_app="web", ts=3)
    kept, report = clean_feedback([rec])
    assert kept == [("record 0", rec)] and report.kept == 1


# ============================================================================================ bad input


@pytest.mark.parametrize(
    "record, field",
    [
        ({"prompt": "Q?", "completion": "A long answer."}, "label"),
        ({"prompt": "Q?", "completion": "A long answer.", "label": "yes"}, "label"),
        ({"prompt": "Q?", "completion": "A long answer.", "label": 1}, "label"),
        ({"prompt": "Q?", "completion": "", "label": True}, "completion"),
        ({"prompt": "Q?", "completion": "   ", "label": False}, "completion"),
        ({"prompt": msgs("user", "Q?"), "completion": msgs("assistant", " "), "label": True}, "completion"),
        ({"prompt": "", "completion": "A long answer.", "label": True}, "prompt"),
        ({"prompt": "Q?", "completion": "A long answer.", "label": True, "user_id": ["a"]}, "user_id"),
    ],
)
@pytest.mark.parametrize("step", [clean_feedback, feedback_to_pairs])
def test_bad_records_name_file_line_and_field(tmp_path, record, field, step):
    good = fb("Fine?", "A fine answer here.", True)
    path = write_jsonl(tmp_path / "fb.jsonl", [good, record])
    with pytest.raises(DataError) as e:
        step(read_records(str(path)))
    assert f"{path}:2: field '{field}'" in str(e.value) and "Fix:" in str(e.value)


def test_bad_options():
    with pytest.raises(DataError, match="min_rate"):
        clean_feedback([], min_rate=0.9, max_rate=0.1)
    with pytest.raises(DataError, match="max_pairs_per_prompt"):
        feedback_to_pairs([], max_pairs_per_prompt=0)


# ============================================================================================ pairs


def test_every_up_down_combination_and_single_label_prompts_give_none():
    records = [
        fb("Q?", "up 1", True),
        fb("Q?", "down 1", False),
        fb("Only up?", "up", True),
        fb("Q?", "up 2", True),
        fb("Q?", "down 2", False),
        fb("Q?", "down 3", False),
        fb("Only down?", "down", False),
    ]
    pairs, counts = feedback_to_pairs(records)
    expected = [(f"up {u}", f"down {d}") for u in (1, 2) for d in (1, 2, 3)]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == expected
    assert all(set(p) == {"prompt", "chosen", "rejected"} and p["prompt"] == "Q?" for p in pairs)
    assert (counts.prompts, counts.prompts_with_both, counts.pairs, counts.dropped_by_cap) == (3, 1, 6, 0)


def test_same_completion_up_and_down_makes_no_pair():
    pairs, _ = feedback_to_pairs([fb("Q?", "same", True), fb("Q?", "same", False), fb("Q?", "other", False)])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("same", "other")]


def test_cap_is_respected_and_seeded():
    ups = [fb("Q?", f"up {i}", True) for i in range(4)]
    downs = [fb("Q?", f"down {i}", False) for i in range(4)]
    records = ups + downs + [fb("Small?", "yes", True), fb("Small?", "no", False)]
    pairs, counts = feedback_to_pairs(records, max_pairs_per_prompt=5, seed=1)
    big = [(p["chosen"], p["rejected"]) for p in pairs if p["prompt"] == "Q?"]
    assert len(big) == 5 and len(set(big)) == 5
    assert all(c.startswith("up") and r.startswith("down") for c, r in big)
    assert len(pairs) == 6
    assert feedback_to_pairs(records, max_pairs_per_prompt=5, seed=1)[0] == pairs
    assert any(feedback_to_pairs(records, max_pairs_per_prompt=5, seed=s)[0] != pairs for s in range(2, 6))
    assert (counts.prompts_with_both, counts.pairs, counts.dropped_by_cap) == (2, 6, 11)


def test_chat_pairs_keep_the_message_form_and_group_by_normalized_prompt():
    prompt = msgs("user", "How are you?")
    records = [
        fb(prompt, msgs("assistant", "Fine, thanks!"), True),
        fb([{"content": "How are you?", "role": "user"}], msgs("assistant", "Go away."), False),
    ]
    [pair], _ = feedback_to_pairs(records)
    assert pair == {
        "prompt": prompt,
        "chosen": msgs("assistant", "Fine, thanks!"),
        "rejected": msgs("assistant", "Go away."),
    }
    to_pairwise(pair, "pair")  # valid training data


# ============================================================================================ split


def many_prompts(n: int = 300) -> list[dict]:
    return [fb(f"Question {p}?", f"Answer {p}.{k}", k % 2 == 0) for p in range(n) for k in range(1 + p % 4)]


def test_split_keeps_each_prompt_in_one_split_and_follows_fractions():
    records = many_prompts()
    splits = split_by_prompt(records, (0.7, 0.2, 0.1), seed=0)
    prompts = [{r["prompt"] for r in split} for split in splits]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert sorted(map(json.dumps, sum(splits, []))) == sorted(map(json.dumps, records))
    for split, fraction in zip(splits, (0.7, 0.2, 0.1)):
        assert abs(len(split) / len(records) - fraction) < 0.03


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    records = many_prompts(100)
    assert split_by_prompt(records, seed=3) == split_by_prompt(records, seed=3)
    assert split_by_prompt(records, seed=3) != split_by_prompt(records, seed=4)


def test_split_works_for_pairs_and_sourced_records():
    pairs = [{"prompt": msgs("user", f"Q{i}"), "chosen": "yes", "rejected": "no"} for i in range(50)]
    train, val, test = split_by_prompt(sourced(pairs), (0.6, 0.2, 0.2))
    assert len(train) + len(val) + len(test) == 50 and all(isinstance(item, tuple) for item in train)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (1.0, 0.0, 0.0), (1.2, -0.1, -0.1)])
def test_bad_fractions(fractions):
    with pytest.raises(DataError, match=r"fractions .*sum to 1\. Fix: e\.g\. --fractions 0\.8,0\.1,0\.1"):
        split_by_prompt(many_prompts(5), fractions)


def test_split_needs_a_prompt():
    with pytest.raises(DataError, match="f.jsonl:2: field 'prompt'"):
        split_by_prompt(sourced([{"prompt": "Q"}, {"chosen": "a", "rejected": "b"}]))


def test_write_jsonl_is_atomic_and_creates_dirs(tmp_path):
    path = write_atomic(tmp_path / "a" / "b.jsonl", [{"x": "é"}])
    assert path.read_text(encoding="utf-8") == '{"x": "é"}\n' and list(path.parent.iterdir()) == [path]


# ============================================================================================ CLI


def alignkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignkit", *args], capture_output=True, text=True, timeout=120)


def test_cli_demo_clean_pairs_split(tmp_path):
    proc = alignkit("data", "clean", "builtin:demo_feedback.jsonl", "--out", str(tmp_path / "clean.jsonl"))
    assert proc.returncode == 0, proc.stderr
    removed = dict(re.findall(r"^(\w+): removed (\d+) ", proc.stdout, re.M))
    assert set(removed) == {"rater_bias", "duplicate", "too_short"} and all(int(n) > 0 for n in removed.values())
    assert proc.stdout.count("removed rater") >= 2
    kept = read_records(str(tmp_path / "clean.jsonl"))
    assert len(kept) == int(re.search(r"kept (\d+)", proc.stdout).group(1)) and all("id" in r for _, r in kept)

    proc = alignkit("data", "pairs", str(tmp_path / "clean.jsonl"), "--out", str(tmp_path / "pairs.jsonl"))
    assert proc.returncode == 0, proc.stderr
    pairs = read_records(str(tmp_path / "pairs.jsonl"))
    assert pairs and f"wrote {len(pairs)} pairs" in proc.stdout
    for source, pair in pairs:
        to_pairwise(pair, source)

    proc = alignkit("data", "split", str(tmp_path / "pairs.jsonl"), "--out-dir", str(tmp_path / "split"))
    assert proc.returncode == 0, proc.stderr
    sizes = [len(read_records(str(tmp_path / "split" / f"{n}.jsonl"))) for n in ("train", "val", "test")]
    assert sum(sizes) == len(pairs) and sizes[0] > sizes[1] > 0 and sizes[2] > 0
    assert f"train.jsonl: {sizes[0]} records" in proc.stdout


def test_cli_bad_input_is_one_error_line(tmp_path):
    path = write_jsonl(tmp_path / "fb.jsonl", [fb("Q?", "A long answer.", "yes")])
    proc = alignkit("data", "clean", str(path), "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("error:") == 1
    assert f"{path}:1: field 'label'" in proc.stderr and not (tmp_path / "out.jsonl").exists()


def test_cli_refuses_to_overwrite_the_input(tmp_path):
    path = write_jsonl(tmp_path / "fb.jsonl", rated("u", 3, 3))
    before = path.read_text()
    proc = alignkit("data", "pairs", str(path), "--out", str(tmp_path / "." / "fb.jsonl"))
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_text() == before
