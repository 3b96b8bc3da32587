"""Property tests of the readers: whatever bytes a data file holds, reading and validating it gives valid examples or
one ``UserError`` naming the file, never another exception; well-formed records round-trip unchanged."""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.data import read_records, to_binary, to_pairwise, to_prompt, to_sft, validate_records
from alignkit.data.formats import ROLES
from alignkit.errors import DataError, UserError

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

CONVERTERS = [
    to_pairwise,
    to_sft,
    to_binary,
    to_prompt,
    functools.partial(to_prompt, template="Q: {prompt} ({meta[id]})"),  # a template reaching into a field
]
SUFFIXES = [".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz", ".ndjson"]
FIELDS = ["prompt", "chosen", "rejected", "completion", "messages", "text", "label", "meta", "question"]

# ------------------------------------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from([*ROLES, "human", ""]), "content": st.text(max_size=20) | json_scalars}
    ),
    max_size=4,
)
field_values = json_values | messages | st.text(max_size=40)
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), field_values, max_size=6)
top_values = records | json_values  # a line may also be a list, a number, a string, null


def _name(path: Path) -> str:
    return path.name.split(".")[0]


def _encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


def _write(path: Path, data: bytes, compress: bool | None = None) -> Path:
    if compress is None:
        compress = path.name.endswith(".gz")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _render(rows: list, suffix: str) -> str:
    """``rows`` as the text of a file of type ``suffix`` (CSV: non-text cells as JSON)."""
    if ".csv" in suffix:
        header = sorted({k for r in rows if isinstance(r, dict) for k in r}) or ["prompt"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        for r in rows:
            r = r if isinstance(r, dict) else {"prompt": r}
            writer.writerow([v if isinstance(v, str) else json.dumps(v) for v in (r.get(k, "") for k in header)])
        return out.getvalue()
    if suffix.startswith(".json") and "l" not in suffix:
        return json.dumps(rows, ensure_ascii=False)
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _read_and_validate(path: Path, spec: str | None = None) -> list:
    """Read ``path`` and convert its records every way; any error must be a UserError naming the file."""
    examples = []
    try:
        found = read_records(spec or str(path))
    except UserError as e:
        assert _name(path) in str(e) and "Fix:" in str(e), str(e)
        return examples
    for source, _ in found:
        assert _name(path) in source
    for convert in CONVERTERS:
        try:
            got, problems = validate_records(found, convert, on_invalid="skip")
        except UserError as e:  # pragma: no cover - "skip" does not raise
            raise AssertionError(f"on_invalid=skip raised {e}") from e
        examples += got
        assert len(got) + len(problems) == len(found)
        try:
            validate_records(found, convert)
        except UserError as e:
            assert _name(path) in str(e) and "Fix:" in str(e), str(e)
    for ex in examples:
        for side in ("prompt", "chosen", "rejected", "completion"):
            value = getattr(ex, side, "")
            assert isinstance(value, str) or all(isinstance(m["content"], str) for m in value)
            assert isinstance(value, str) or all(m["role"] in ROLES for m in value)
    return examples


# ------------------------------------------------------------------------------------------- never crash


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), compress=st.booleans())
def test_arbitrary_bytes_read_or_raise_a_user_error(data, suffix, compress):
    with tempfile.TemporaryDirectory() as tmp:
        _read_and_validate(_write(Path(tmp) / f"fuzz{suffix}", data, compress and suffix.endswith(".gz")))


@FAST
@given(
    rows=st.lists(top_values, max_size=5),
    suffix=st.sampled_from(SUFFIXES),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252"]),
    junk=st.sampled_from(["", "\n\n", "\x00", "\ufeff", "{", "[", "]\n", "\r\n"]),
)
def test_records_in_any_encoding_read_or_raise_a_user_error(rows, suffix, encoding, junk):
    """Records of arbitrary JSON values, written in any encoding (with or without BOM), plus some junk."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / f"enc{suffix}", _encode(_render(rows, suffix) + junk, encoding))
        _read_and_validate(path)


@FAST
@given(text=st.text(max_size=200), suffix=st.sampled_from(SUFFIXES), encoding=st.sampled_from(["utf-8", "utf-16"]))
def test_arbitrary_text_reads_or_raises_a_user_error(text, suffix, encoding):
    with tempfile.TemporaryDirectory() as tmp:
        _read_and_validate(_write(Path(tmp) / f"text{suffix}", _encode(text, encoding)))


@settings(max_examples=25, deadline=None, database=None)
@given(
    depth=st.integers(1, 120_000),
    opener=st.sampled_from(["[", '{"a":', '{"prompt": [']),
    suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
)
def test_deep_nesting_reads_or_raises_a_user_error(depth, opener, suffix):
    closer = {"[": "]", '{"a":': "}", '{"prompt": [': "]}"}[opener]
    body = opener * depth + "1" + closer * depth
    if suffix == ".csv":  # a cell holding (what looks like) chat messages is decoded as JSON
        body = 'messages\n"[{' + body.replace('"', '""') + '}]"\n'
    elif suffix == ".json":
        body = f"[{body}]"
    with tempfile.TemporaryDirectory() as tmp:
        _read_and_validate(_write(Path(tmp) / f"deep{suffix}", body.encode()))


@settings(max_examples=15, deadline=None, database=None)
@given(
    unit=st.text(min_size=1, max_size=4),
    repeat=st.sampled_from([40_000, 300_000]),
    field=st.sampled_from(["prompt", "chosen", "messages"]),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".jsonl.gz"]),
)
def test_huge_fields_are_read(unit, repeat, field, suffix):
    big = unit * repeat
    row = {"prompt": "p", "chosen": "c", "rejected": "r", field: big}
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / f"huge{suffix}", _render([row], suffix).encode())
        examples = _read_and_validate(path)
        if field != "messages" and big.strip() and "\x00" not in big and "\r" not in big:
            assert any(getattr(ex, field, None) == big for ex in examples)


@FAST
@given(
    inside=st.text(alphabet="0123456789-+: ab", max_size=8),
    base=st.sampled_from(["data.jsonl", "missing.jsonl", "builtin:judge_prefs.jsonl", "builtin:nope.jsonl"]),
)
def test_any_slice_spec_reads_or_raises_a_user_error(inside, base):
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp) / "data.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 5)
        spec = f"{tmp}/{base}[{inside}]" if not base.startswith("builtin:") else f"{base}[{inside}]"
        try:
            records = read_records(spec)
        except DataError as e:
            named = spec if "missing" not in base and "nope" not in base else base
            assert named in str(e) or spec in str(e), str(e)
            assert "Fix:" in str(e)
        else:
            assert isinstance(records, list)


# ------------------------------------------------------------------------------------------- round trips

prefs = st.lists(
    st.fixed_dictionaries({"prompt": st.text(min_size=1), "chosen": st.text(min_size=1), "rejected": st.text()}),
    max_size=8,
)


@FAST
@given(rows=prefs, bom=st.booleans(), suffix=st.sampled_from([".jsonl", ".jsonl.gz", ".json", ".json.gz"]))
def test_preference_records_round_trip(rows, bom, suffix):
    text = ("\ufeff" if bom else "") + _render(rows, suffix)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / f"prefs{suffix}", text.encode())
        assert [r for _, r in read_records(str(path))] == rows
        valid = [r for r in rows if r["prompt"].strip() and r["chosen"].strip() and r["rejected"].strip()]
        valid = [r for r in valid if r["chosen"] != r["rejected"]]
        examples, _ = validate_records(read_records(str(path)), to_pairwise, on_invalid="skip")
        assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [
            (r["prompt"], r["chosen"], r["rejected"]) for r in valid
        ]


@FAST
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                k: st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"))
                for k in ("prompt", "chosen", "rejected")
            }
        ),
        min_size=1,
        max_size=6,
    ),
    bom=st.booleans(),
)
def test_csv_cells_round_trip(rows, bom):
    rows = [r for r in rows if not any(v.lstrip().startswith("[{") for v in r.values())]  # those cells are JSON
    text = ("\ufeff" if bom else "") + _render(rows, ".csv")
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "cells.csv", text.encode())
        assert [r for _, r in read_records(str(path))] == rows


# ------------------------------------------------------------------------------------------- named defects


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("bom.jsonl", codecs.BOM_UTF8 + b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n', None),
        ("bom.json", codecs.BOM_UTF8 + b'[{"prompt": "p", "chosen": "a", "rejected": "b"}]', None),
        ("bom.csv", codecs.BOM_UTF8 + b"prompt,chosen,rejected\np,a,b\n", None),
        ("cat.jsonl", b"\n" + codecs.BOM_UTF8 + b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n', None),
        ("u16.jsonl", '{"prompt": "p"}\n'.encode("utf-16"), "u16.jsonl: is UTF-16 text, not UTF-8. Fix: save it"),
        ("u16be.json", codecs.BOM_UTF16_BE + "[]".encode("utf-16-be"), "u16be.json: is UTF-16 text"),
        ("u16.csv", "prompt\np\n".encode("utf-16-le"), "u16.csv: is UTF-16 text"),  # no BOM
        ("latin.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', r"latin.jsonl:2: is not UTF-8 text"),
        ("latin.csv", b"prompt\nok\ncaf\xe9\n", r"latin.csv:3: is not UTF-8 text"),
        ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "deep.jsonl:1: is nested too deeply"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "deep.json: is nested too deeply"),
        ("nul.jsonl", b'{"prompt": "p\x00"}\n', "nul.jsonl:1: holds NUL bytes"),
        ("nul.csv", b"prompt\np\x00\n", "nul.csv:2: holds NUL bytes"),
        ("top.json", b'{"prompt": "p"}', "top.json: expected a JSON list of records, got a JSON object. Fix"),
        ("ragged.csv", b"prompt,chosen\np,a,extra\n", "ragged.csv:2: has 3 cell"),
        ("short.csv", b"prompt,chosen\np,a\nq\n", "short.csv:3: has 1 cell"),
        ("dupes.csv", b"prompt,prompt\np,q\n", "dupes.csv:1: the header names column"),
        ("plain.jsonl.gz", b'{"prompt": "p"}\n', "plain.jsonl.gz: cannot be read as gzip"),
        ("cut.jsonl.gz", gzip.compress(b'{"prompt": "p"}\n' * 50)[:25], "cut.jsonl.gz: cannot be read as gzip"),
        ("plain.csv.gz", b"prompt\np\n", "plain.csv.gz: cannot be read as gzip"),
        ("bigint.jsonl", b'{"label": ' + b"9" * 5000 + b"}\n", "bigint.jsonl:1: not readable JSON"),
        ("surrogate.jsonl", b'{"prompt": "\\ud800"}\n', "surrogate.jsonl:1: holds an unpaired surrogate"),
        ("pretty.jsonl", b'{\n  "prompt": "p"\n}\n', "pretty.jsonl:1: not valid JSON"),
    ],
)
def test_bad_files_raise_one_clear_data_error(tmp_path, name, data, message):
    path = _write(tmp_path / name, data, compress=False)
    if message is None:
        (ex,), _ = validate_records(read_records(str(path)), to_pairwise)
        assert (ex.prompt, ex.chosen, ex.rejected) == ("p", "a", "b")
        return
    with pytest.raises(DataError, match="Fix:") as e:
        read_records(str(path))
    assert message in str(e.value)


def test_blank_and_empty_files_hold_no_records(tmp_path):
    for name, data in [("e.jsonl", b""), ("b.jsonl", b"\n  \n\r\n"), ("e.json", b" \n"), ("e.csv", b"")]:
        assert read_records(str(_write(tmp_path / name, data))) == []


def test_json_values_that_are_not_objects_are_invalid_records_named_by_line(tmp_path):
    path = _write(tmp_path / "scalars.jsonl", b'[1, 2]\n3\n"text"\nnull\n')
    with pytest.raises(DataError, match=r"scalars.jsonl:4: field 'record'.*\nFix:") as e:
        validate_records(read_records(str(path)), to_pairwise)
    assert all(f"scalars.jsonl:{i}:" in str(e.value) for i in (1, 2, 3, 4))


@pytest.mark.parametrize("inside", ["a:5", "5", "", "1:2:3", "-:5", "1.5:", " + ", ":" + "9" * 40])
@pytest.mark.parametrize("base", ["pairs.jsonl", "builtin:judge_prefs.jsonl"])
def test_a_bad_slice_names_the_spec_and_the_syntax(tmp_path, base, inside):
    if base == "pairs.jsonl":
        base = str(_write(tmp_path / base, b'{"prompt": "p"}\n'))
    spec = f"{base}[{inside}]"
    with pytest.raises(DataError) as e:
        read_records(spec)
    assert str(e.value).startswith(f"{spec}: [{inside}] is not a slice")
    assert "Fix: use NAME[START:STOP] with integers" in str(e.value)


def test_a_slice_of_a_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"data file \S*missing.jsonl does not exist") as e:
        read_records(f"{tmp_path / 'missing.jsonl'}[:5]")
    assert "[:5]" not in str(e.value)
    with pytest.raises(DataError, match=r"^builtin:nope.jsonl: no such built-in data set"):
        read_records("builtin:nope.jsonl[ :5 ]")
    assert len(read_records("builtin:judge_prefs.jsonl[ 1 : +3 ]")) == 2


def test_odd_paths_are_data_errors(tmp_path):
    for spec in ["x" * 5000 + ".jsonl", "builtin:" + "x" * 5000, "/dev/null", f"{tmp_path}/a\x00b.jsonl"]:
        with pytest.raises(DataError, match="Fix:"):
            read_records(spec)
