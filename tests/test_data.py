"""Readers (every file format, errors naming file:line) and record formats (pairwise, SFT, binary)."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import shared_data_path, write_jsonl

from alignkit.data import (
    BinaryExample,
    PairwiseExample,
    SFTExample,
    parse_hh_transcript,
    read_records,
    to_binary,
    to_pairwise,
    to_prompt,
    to_sft,
    validate_records,
)
from alignkit.data.formats import InvalidRecord
from alignkit.errors import DataError

RECORDS = [
    {"prompt": "What is two?", "chosen": "Two is a number.", "rejected": "No idea."},
    {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},
    {"prompt": "Count", "chosen": "one two three", "rejected": "three two one"},
]


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# ============================================================================================ readers


def test_jsonl_sources_have_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS, blank_lines_after=(0,))
    out = read_records(str(path))
    assert [rec for _, rec in out] == RECORDS
    # line 2 is blank: records are on lines 1, 3 and 4
    assert [src for src, _ in out] == [f"{path}:1", f"{path}:3", f"{path}:4"]


def test_jsonl_whitespace_only_lines_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n   \n\t\n" + json.dumps(RECORDS[1]) + "\n")
    out = read_records(str(path))
    assert [src for src, _ in out] == [f"{path}:1", f"{path}:4"]


def test_jsonl_gz(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl.gz", RECORDS)
    out = read_records(str(path))
    assert [rec for _, rec in out] == RECORDS
    assert out[2][0] == f"{path}:3"


def test_json_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(RECORDS))
    out = read_records(str(path))
    assert [rec for _, rec in out] == RECORDS
    assert [src for src, _ in out] == [f"{path}[0]", f"{path}[1]", f"{path}[2]"]


def test_json_data_key(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"version": 1, "data": RECORDS}))
    assert [rec for _, rec in read_records(str(path))] == RECORDS


def test_json_not_a_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"rows": RECORDS}))
    with pytest.raises(DataError, match="expected a JSON list"):
        read_records(str(path))


def test_malformed_json_file_names_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n{"a": 1},\n{"a": oops}\n]')
    with pytest.raises(DataError) as e:
        read_records(str(path))
    assert f"{path}:3" in str(e.value)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is an optional dependency (alignkit[data])")
    import pyarrow.parquet as pq

    records = [
        {"prompt": "p1", "chosen": _msgs(("assistant", "a")), "rejected": _msgs(("assistant", "b"))},
        {"prompt": "p2", "chosen": _msgs(("assistant", "c")), "rejected": _msgs(("assistant", "d"))},
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    out = read_records(str(path))
    assert [rec for _, rec in out] == records
    assert [src for src, _ in out] == [f"{path}:row 0", f"{path}:row 1"]


def test_corrupt_parquet(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is an optional dependency (alignkit[data])")
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="parquet"):
        read_records(str(path))


def test_csv_decodes_json_message_lists(tmp_path):
    path = tmp_path / "train.csv"
    messages = _msgs(("user", "Hi, there"), ("assistant", "Hello"))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["messages", "note", "brackets"])
        writer.writeheader()
        writer.writerow({"messages": json.dumps(messages), "note": "plain, text", "brackets": "[not json"})
        writer.writerow({"messages": json.dumps(messages[:1]), "note": "", "brackets": "[{broken"})
    out = read_records(str(path))
    assert out[0] == (f"{path}:2", {"messages": messages, "note": "plain, text", "brackets": "[not json"})
    assert out[1][0] == f"{path}:3"
    assert out[1][1]["messages"] == messages[:1]
    assert out[1][1]["brackets"] == "[{broken"  # not valid JSON: left as text


def test_csv_sources_name_the_line_after_a_multiline_cell(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('prompt,completion\n"line one\nline two",a\nsecond,b\n', encoding="utf-8")
    out = read_records(str(path))
    assert [rec for _, rec in out] == [
        {"prompt": "line one\nline two", "completion": "a"},
        {"prompt": "second", "completion": "b"},
    ]
    # the first record spans lines 2-3, so the second record is on line 4 of the file
    assert out[0][0] == f"{path}:2"
    assert out[1][0] == f"{path}:4"


def test_saved_hf_dataset_directory(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is an optional dependency (alignkit[data])")
    ds = datasets.Dataset.from_list(RECORDS)
    path = tmp_path / "saved"
    ds.save_to_disk(str(path))
    out = read_records(str(path))
    assert [rec for _, rec in out] == RECORDS
    assert out[1][0] == f"{path}[train][1]"


def test_saved_hf_dataset_dict_split(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is an optional dependency (alignkit[data])")
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(RECORDS[:2]), "test": datasets.Dataset.from_list(RECORDS[2:])}
    )
    path = tmp_path / "saved_dict"
    dd.save_to_disk(str(path))
    assert [rec for _, rec in read_records(str(path), split="test")] == RECORDS[2:]
    with pytest.raises(DataError, match="no split 'validation'"):
        read_records(str(path), split="validation")


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n" + '{"prompt": "x", "chosen": \n')
    with pytest.raises(DataError) as e:
        read_records(str(path))
    assert f"{path}:3" in str(e.value)
    assert "not valid JSON" in str(e.value)


def test_bad_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot be read"):
        read_records(str(path))


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="unknown file type"):
        read_records(str(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as e:
        read_records(str(path))
    assert str(path) in str(e.value) and "does not exist" in str(e.value)


# ============================================================================================ pairwise


def test_pairwise_explicit_text_prompt():
    ex = to_pairwise(RECORDS[0], "f:1")
    assert ex == PairwiseExample("What is two?", "Two is a number.", "No idea.", "f:1")


def test_pairwise_explicit_conversational_prompt():
    rec = {
        "prompt": _msgs(("system", "Be brief."), ("user", "Hi")),
        "chosen": _msgs(("assistant", "Hello!")),
        "rejected": _msgs(("assistant", "Bye.")),
    }
    ex = to_pairwise(rec, "f:2")
    assert ex.prompt == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    assert ex.chosen == ({"role": "assistant", "content": "Hello!"},)
    assert ex.rejected == ({"role": "assistant", "content": "Bye."},)
    assert isinstance(ex.prompt, tuple) and ex.source == "f:2"


def test_pairwise_messages_drop_extra_keys():
    rec = {
        "prompt": [{"role": "user", "content": "Hi", "name": "bob"}],
        "chosen": _msgs(("assistant", "a")),
        "rejected": _msgs(("assistant", "b")),
    }
    assert to_pairwise(rec, "s").prompt == ({"role": "user", "content": "Hi"},)


def test_pairwise_text_prompt_with_message_completions():
    rec = {"prompt": "Hi", "chosen": _msgs(("assistant", "Hello!")), "rejected": _msgs(("assistant", "Bye."))}
    ex = to_pairwise(rec, "s")
    assert ex.prompt == ({"role": "user", "content": "Hi"},)
    assert ex.chosen == ({"role": "assistant", "content": "Hello!"},)


def test_pairwise_implicit_conversational_prompt():
    shared = _msgs(("user", "Hi"), ("assistant", "Hello, how can I help?"), ("user", "Tell me a joke"))
    rec = {
        "chosen": shared + _msgs(("assistant", "Why did the chicken...")),
        "rejected": shared + _msgs(("assistant", "No.")),
    }
    ex = to_pairwise(rec, "s")
    assert ex.prompt == tuple(shared)
    assert ex.chosen == ({"role": "assistant", "content": "Why did the chicken..."},)
    assert ex.rejected == ({"role": "assistant", "content": "No."},)


def test_pairwise_implicit_prompt_backs_off_shared_assistant_turns():
    # chosen and rejected start their answers with the same assistant turn: the prompt still ends with the user
    rec = {
        "chosen": _msgs(("user", "Q"), ("assistant", "Well"), ("assistant", "yes")),
        "rejected": _msgs(("user", "Q"), ("assistant", "Well"), ("assistant", "no")),
    }
    ex = to_pairwise(rec, "s")
    assert ex.prompt == ({"role": "user", "content": "Q"},)
    assert ex.chosen == ({"role": "assistant", "content": "Well"}, {"role": "assistant", "content": "yes"})


def test_pairwise_implicit_hh_rlhf_text():
    chosen = (
        "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And of Italy?"
        "\n\nAssistant: Rome is the capital of Italy."
    )
    rejected = (
        "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And of Italy?"
        "\n\nAssistant: I don't know."
    )
    ex = to_pairwise({"chosen": chosen, "rejected": rejected}, "hh:1")
    assert ex.prompt == (
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    )
    assert ex.prompt[-1]["role"] == "user"
    assert ex.chosen == ({"role": "assistant", "content": "Rome is the capital of Italy."},)
    assert ex.rejected == ({"role": "assistant", "content": "I don't know."},)


def test_parse_hh_transcript():
    assert parse_hh_transcript("Human: hi\n\nAssistant: hello") == (
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    )
    assert parse_hh_transcript("\n\nHuman: a\nb\n\nAssistant:  c  ") == (
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c"},
    )
    assert parse_hh_transcript("just some text") is None


def test_pairwise_implicit_plain_text_cut_at_whitespace():
    rec = {"chosen": "The answer is twelve", "rejected": "The answer is twenty"}
    ex = to_pairwise(rec, "s")
    # the common prefix "The answer is twe" is cut back to a word boundary
    assert ex.prompt == "The answer is "
    assert ex.chosen == "twelve" and ex.rejected == "twenty"
    assert ex.prompt + ex.chosen == rec["chosen"] and ex.prompt + ex.rejected == rec["rejected"]


def test_pairwise_implicit_plain_text_one_is_prefix_of_other():
    ex = to_pairwise({"chosen": "I think so", "rejected": "I think so too"}, "s")
    assert (ex.prompt, ex.chosen, ex.rejected) == ("I think ", "so", "so too")


@pytest.mark.parametrize(
    "record,field,problem",
    [
        ({"prompt": "p", "rejected": "r"}, "chosen", "is missing"),
        ({"prompt": "p", "chosen": "c"}, "rejected", "is missing"),
        ({"prompt": "p", "chosen": "c", "rejected": None}, "rejected", "is missing"),
        ({"prompt": 5, "chosen": "c", "rejected": "r"}, "prompt", "got int"),
        ({"prompt": "p", "chosen": {"a": 1}, "rejected": "r"}, "chosen", "got dict"),
        ({"prompt": "p", "chosen": "c", "rejected": 3.5}, "rejected", "got float"),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, "chosen", "is empty"),
        ({"prompt": "p", "chosen": "c", "rejected": "   "}, "rejected", "is empty"),
        ({"prompt": "  ", "chosen": "c", "rejected": "r"}, "prompt", "is empty"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "identical"),
        ({"prompt": "p", "chosen": _msgs(("assistant", "")), "rejected": _msgs(("assistant", "r"))}, "chosen", "empty"),
        ({"prompt": "p", "chosen": [], "rejected": "r"}, "chosen", "is empty"),
        (
            {
                "prompt": _msgs(("bot", "hi")),
                "chosen": _msgs(("assistant", "c")),
                "rejected": _msgs(("assistant", "r")),
            },
            "prompt[0].role",
            "'bot'",
        ),
        (
            {"prompt": [{"role": "user"}], "chosen": _msgs(("assistant", "c")), "rejected": _msgs(("assistant", "r"))},
            "prompt[0]",
            "message",
        ),
        (
            {
                "prompt": [{"role": "user", "content": 3}],
                "chosen": _msgs(("assistant", "c")),
                "rejected": _msgs(("assistant", "r")),
            },
            "prompt[0].content",
            "must be text",
        ),
        (
            {
                "prompt": _msgs(("user", "q"), ("assistant", "a")),
                "chosen": _msgs(("assistant", "c")),
                "rejected": _msgs(("assistant", "r")),
            },
            "prompt",
            "ends with an assistant message",
        ),
        (
            {"prompt": "p", "chosen": _msgs(("user", "c")), "rejected": _msgs(("assistant", "r"))},
            "chosen",
            "only hold assistant messages",
        ),
        ({"prompt": _msgs(("user", "q")), "chosen": "c", "rejected": "r"}, "chosen", "mixes plain text and chat"),
        (
            {"prompt": "p", "chosen": _msgs(("assistant", "c")), "rejected": "r"},
            "rejected",
            "mixes plain text and chat",
        ),
        ({"chosen": _msgs(("user", "q"), ("assistant", "c")), "rejected": "plain"}, "rejected", "both be text"),
        ({"chosen": _msgs(("assistant", "c")), "rejected": _msgs(("assistant", "r"))}, "chosen", "share no prompt"),
    ],
)
def test_pairwise_invalid(record, field, problem):
    with pytest.raises(InvalidRecord) as e:
        to_pairwise(record, "s")
    assert e.value.field == field
    assert problem in e.value.problem


def test_pairwise_non_dict_record():
    with pytest.raises(InvalidRecord) as e:
        to_pairwise(["a", "b"], "s")
    assert e.value.field == "record" and "got list" in e.value.problem


# ============================================================================================ validate_records


def _sources(records, name="train.jsonl"):
    return [(f"{name}:{i + 1}", rec) for i, rec in enumerate(records)]


def test_validate_records_error_lists_source_and_field():
    records = _sources(
        [RECORDS[0], {"prompt": "p", "chosen": "c"}, RECORDS[1], {"prompt": "p", "chosen": 5, "rejected": "r"}]
    )
    with pytest.raises(DataError) as e:
        validate_records(records, to_pairwise, on_invalid="error")
    msg = str(e.value)
    assert "2 invalid record(s)" in msg
    assert "train.jsonl:2: field 'rejected': is missing" in msg
    assert "train.jsonl:4: field 'chosen'" in msg
    assert "train.jsonl:1" not in msg and "train.jsonl:3" not in msg
    assert "on_invalid=skip" in msg


def test_validate_records_error_caps_listing():
    records = _sources([{"prompt": "p"}] * 25)
    with pytest.raises(DataError) as e:
        validate_records(records, to_pairwise, max_listed=3)
    msg = str(e.value)
    assert "25 invalid record(s)" in msg and "... and 22 more" in msg
    assert "train.jsonl:3:" in msg and "train.jsonl:4:" not in msg


def test_validate_records_skip_returns_good_and_problems():
    records = _sources([RECORDS[0], {"prompt": "p", "chosen": "x", "rejected": "x"}, RECORDS[2]])
    examples, problems = validate_records(records, to_pairwise, on_invalid="skip")
    assert [ex.source for ex in examples] == ["train.jsonl:1", "train.jsonl:3"]
    assert all(isinstance(ex, PairwiseExample) for ex in examples)
    assert problems == ["train.jsonl:2: field 'rejected': is identical to chosen; a pair must differ"]


def test_validate_records_all_good():
    examples, problems = validate_records(_sources(RECORDS), to_pairwise)
    assert len(examples) == 3 and problems == []


# ============================================================================================ SFT


def test_sft_prompt_completion_text():
    assert to_sft({"prompt": "Q?", "completion": "A."}, "s") == SFTExample("Q?", "A.", "s")


def test_sft_completion_without_prompt():
    assert to_sft({"completion": "A."}, "s") == SFTExample("", "A.", "s")
    assert to_sft({"prompt": None, "completion": "A."}, "s") == SFTExample("", "A.", "s")


def test_sft_text_prompt_with_message_completion():
    ex = to_sft({"prompt": "Q?", "completion": _msgs(("assistant", "A."))}, "s")
    assert ex.prompt == ({"role": "user", "content": "Q?"},)
    assert ex.completion == ({"role": "assistant", "content": "A."},)


def test_sft_messages_last_assistant_turns_are_completion():
    msgs = _msgs(
        ("system", "S"), ("user", "U1"), ("assistant", "A1"), ("user", "U2"), ("assistant", "A2"), ("assistant", "A3")
    )
    ex = to_sft({"messages": msgs}, "s")
    assert ex.prompt == tuple(msgs[:4])
    assert ex.completion == tuple(msgs[4:])
    assert ex.prompt[-1]["role"] == "user"


def test_sft_text():
    assert to_sft({"text": "Whole document."}, "s") == SFTExample("", "Whole document.", "s")


@pytest.mark.parametrize(
    "record,field,problem",
    [
        ({"messages": _msgs(("user", "q"))}, "messages", "end with at least one assistant"),
        ({"messages": _msgs(("user", "q"), ("assistant", "a"), ("user", "again"))}, "messages", "assistant"),
        ({"messages": "text"}, "messages", "list of"),
        ({"messages": []}, "messages", "empty list"),
        ({"messages": _msgs(("user", "q"), ("assistant", " "))}, "messages", "empty"),
        ({"prompt": "q", "completion": ""}, "completion", "is empty"),
        ({"prompt": _msgs(("user", "q")), "completion": "a"}, "completion", "mixes"),
        ({"text": ""}, "text", "is empty"),
        ({"other": "x"}, "completion", "is missing"),
    ],
)
def test_sft_invalid(record, field, problem):
    with pytest.raises(InvalidRecord) as e:
        to_sft(record, "s")
    assert e.value.field == field and problem in e.value.problem


# ============================================================================================ binary / prompt


@pytest.mark.parametrize("label", [True, False])
def test_binary_labels(label):
    ex = to_binary({"prompt": "Q", "completion": "A", "label": label}, "s")
    assert ex == BinaryExample("Q", "A", label, "s")
    assert ex.label is label


def test_binary_conversational():
    ex = to_binary({"prompt": "Q", "completion": _msgs(("assistant", "A")), "label": True}, "s")
    assert ex.prompt == ({"role": "user", "content": "Q"},)


@pytest.mark.parametrize(
    "record,problem",
    [
        ({"prompt": "Q", "completion": "A"}, "is missing"),
        ({"prompt": "Q", "completion": "A", "label": None}, "is missing"),
        ({"prompt": "Q", "completion": "A", "label": "yes"}, "'yes'"),
        ({"prompt": "Q", "completion": "A", "label": 1}, "is 1"),
        ({"prompt": "Q", "completion": "A", "label": 0}, "is 0"),
    ],
)
def test_binary_bad_label(record, problem):
    with pytest.raises(InvalidRecord) as e:
        to_binary(record, "s")
    assert e.value.field == "label" and problem in e.value.problem


def test_prompt_only():
    assert to_prompt({"prompt": "Q"}, "s").prompt == "Q"
    with pytest.raises(InvalidRecord) as e:
        to_prompt({"question": "Q"}, "s")
    assert e.value.field == "prompt"


# ============================================================================================ real data


def test_real_hh_rlhf_converts():
    path = shared_data_path("hh-rlhf", "harmless-base-test-part1.jsonl.gz")
    if not path.is_file():
        pytest.skip(f"shared data file {path} is not present in this checkout")
    records = read_records(str(path))
    assert len(records) == 1500
    assert records[0][0] == f"{path}:1"
    examples, problems = validate_records(records, to_pairwise, on_invalid="skip")
    assert len(examples) > 1400
    assert len(examples) + len(problems) == 1500
    for ex in examples:
        assert isinstance(ex.prompt, tuple) and ex.prompt[-1]["role"] == "user"
        assert all(m["role"] == "assistant" for m in ex.chosen + ex.rejected)
        assert ex.chosen != ex.rejected


def test_slice_selects_records_by_position(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"i": i} for i in range(10)])
    assert [r["i"] for _, r in read_records(f"{path}[:3]")] == [0, 1, 2]
    assert [r["i"] for _, r in read_records(f"{path}[7:]")] == [7, 8, 9]
    assert [r["i"] for _, r in read_records(f"{path}[-2:]")] == [8, 9]
    assert [r["i"] for _, r in read_records(f"{path}[2:4]")] == [2, 3]
    assert read_records(f"{path}[2:4]")[0][0].endswith("r.jsonl:3")  # sources keep line numbers
    with pytest.raises(DataError, match="does not exist"):
        read_records(f"{tmp_path / 'missing.jsonl'}[:3]")


def test_plus_joins_data_sets_in_order(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"i": i} for i in range(5)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"i": 10 + i} for i in range(3)])
    joined = read_records(f"{a}[3:] + {b} + {a}[:1]")
    assert [r["i"] for _, r in joined] == [3, 4, 10, 11, 12, 0]
    assert joined[2][0].endswith("b.jsonl:1")  # each part keeps its own sources
    with pytest.raises(DataError, match="missing.jsonl does not exist"):
        read_records(f"{a} + {tmp_path / 'missing.jsonl'}")


def test_shipped_judge_pairs_are_valid_balanced_and_apart_from_the_demo():
    """The demo judge's own pairs: 40 per category, interleaved (any slice holds every category), none of the
    demo's or the evaluation sets' prompts, and length is no cue outside concision (the hh judge learned length)."""
    import re
    from collections import Counter

    from alignkit.data.formats import to_pairwise

    records = read_records("builtin:judge_prefs.jsonl")
    examples = [to_pairwise(r, s) for s, r in records]
    cats = [r["category"] for _, r in records]
    assert Counter(cats) == {c: 40 for c in ("helpfulness", "harmlessness", "honesty", "concision",
                                             "instruction_following")}  # fmt: skip
    assert len(set(cats[:5])) == 5 and all(Counter(cats[:100]).get(c) == 20 for c in set(cats))

    def words(text: str) -> frozenset:
        return frozenset(re.findall(r"[a-z0-9']+", text.lower()))

    mine = [words(e.prompt[-1]["content"]) for e in examples]
    assert len(set(mine)) == 200
    others = []
    for name in ("demo_prefs_train.jsonl", "demo_prefs_heldout.jsonl", "demo_sft.jsonl", "demo_feedback.jsonl",
                 "helpful_prompts.jsonl", "safety_prompts.jsonl", "red_team_prompts.jsonl"):  # fmt: skip
        for _, r in read_records(f"builtin:{name}"):
            p = r.get("prompt") or r.get("messages")
            text = p if isinstance(p, str) else " ".join(m["content"] for m in p if m["role"] == "user")
            others.append(words(text))
    close = [(a, b) for a in mine for b in others if len(a & b) / len(a | b) > 0.5]
    assert not close, close[:3]
    for cat in set(cats) - {"concision"}:
        pairs = [e for e, c in zip(examples, cats) if c == cat]
        longer = sum(len(e.chosen[-1]["content"].split()) > len(e.rejected[-1]["content"].split()) for e in pairs)
        assert 14 <= longer <= 26, (cat, longer)
