"""alignkit eval human: export anonymized A/B pairs, fill the labels from the key, import -> the same statistics."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
from helpers import write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.errors import DataError, UserError
from alignkit.eval.human import COLUMNS, cohen_kappa, describe_human, export_pairs, import_labels
from alignkit.eval.judged import match_responses
from alignkit.eval.winrate import win_rate

N = 20
PROMPTS = [f"Question {i:02d}: say something about topic {i}." for i in range(N)]


def records(tmp_path, name, texts, categories=None):
    rows = [{"prompt": p, "response": t} for p, t in zip(PROMPTS, texts)]
    for r, c in zip(rows, categories or []):
        r["category"] = c
    return write_jsonl(tmp_path / name, rows)


def read(path):
    from alignkit.data.readers import read_records

    return read_records(str(path))


@pytest.fixture
def exported(tmp_path):
    a = records(tmp_path, "a.jsonl", [f"A answers {i} " + "in detail " * (i % 4) for i in range(N)], ["x", "y"] * 10)
    b = records(tmp_path, "b.jsonl", [f"B says {i}" for i in range(N)])
    matched = match_responses(read(a), read(b))
    csv_path, key_path = export_pairs(matched, tmp_path / "pairs.csv", tmp_path / "key.json", seed=3,
                                      a_name="policy-alpha", b_name="policy-beta")  # fmt: skip
    return matched, csv_path, key_path


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def fill(csv_path, out, labels: dict, header=COLUMNS):
    """Write ``csv_path``'s rows with ``labels`` {item_id: label} into ``out`` (only the columns in ``header``)."""
    rows = read_csv(csv_path)
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            row["label"] = labels.get(row["item_id"], "")
            writer.writerow([row[c] for c in header])
    return out


def labels_for(key_path, wants: dict) -> dict:
    """Position labels from outcomes for A {item_index_in_A_order: 'A' | 'B' | 'tie' | 'both_bad'}."""
    items = list(json.loads(key_path.read_text())["items"].items())
    out = {}
    for i, want in wants.items():
        item_id, info = items[i]
        if want in ("A", "B"):
            out[item_id] = str(info["a_is"] if want == "A" else 3 - info["a_is"])
        else:
            out[item_id] = want
    return out


def test_round_trip_gives_the_exact_counts_and_the_same_win_rate(exported, tmp_path):
    matched, csv_path, key_path = exported
    wants = {i: "A" if i < 11 else "B" if i < 16 else "tie" if i < 18 else "both_bad" for i in range(N)}
    filled = fill(csv_path, tmp_path / "filled.csv", labels_for(key_path, wants))
    result = import_labels([filled], key_path)
    assert (result.win.wins, result.win.losses, result.win.ties) == (11, 5, 4)
    assert result.both_bad == 2 and result.unlabeled == 0 and result.agreement is None
    outcomes = [1.0 if w == "A" else 0.0 if w == "B" else 0.5 for w in wants.values()]
    length_diff = [len(x) - len(y) for x, y in zip(matched.a, matched.b)]
    assert result.win == win_rate(outcomes, length_diff, matched.categories, seed=0)
    assert [r["source"] for r in result.rows] == matched.sources and set(result.win.per_category) == {"x", "y"}
    lines = describe_human(result)
    assert lines[0] == "policy-alpha vs policy-beta on 20 prompts: 11 wins, 4 ties, 5 losses"
    assert any("both bad (counted as ties): 2 of 20 labeled items" in line for line in lines)
    # labels are read case-insensitively, stripped, with "both bad" / "both-bad" as both_bad
    messy = {k: {"tie": " TIE ", "both_bad": "Both Bad"}.get(v, v) for k, v in labels_for(key_path, wants).items()}
    again = import_labels([fill(csv_path, tmp_path / "messy.csv", messy)], key_path)
    assert again.win == result.win and again.both_bad == 2


def test_pairs_are_anonymized_and_randomized(exported, tmp_path):
    matched, csv_path, key_path = exported
    text = csv_path.read_text(encoding="utf-8")
    rows = read_csv(csv_path)
    assert list(rows[0]) == list(COLUMNS) and all(r["label"] == r["notes"] == "" for r in rows)
    assert "policy-alpha" not in text and "policy-beta" not in text and "a.jsonl" not in text
    ids = [r["item_id"] for r in rows]
    key = json.loads(key_path.read_text())
    assert len(set(ids)) == N and set(ids) == set(key["items"])
    in_prompt_order = [i for _, i in sorted(zip([r["prompt"] for r in rows], ids))]
    assert sorted(ids) != in_prompt_order and [r["prompt"] for r in rows] != PROMPTS  # neither ids nor rows ordered
    a_first = sum(info["a_is"] == 1 for info in key["items"].values())
    assert a_first == N // 2  # balanced sides
    for r in rows:  # the key says where A is
        info = key["items"][r["item_id"]]
        i = PROMPTS.index(r["prompt"])
        assert r[f"response_{info['a_is']}"] == matched.a[i] and r[f"response_{3 - info['a_is']}"] == matched.b[i]
        assert info["source"] == matched.sources[i] and info["len_a"] == len(matched.a[i])
    assert key["a"] == "policy-alpha" and key["seed"] == 3 and "response_1" in key["instructions"]
    same = export_pairs(matched, tmp_path / "again.csv", tmp_path / "again.json", seed=3)
    assert same[0].read_text() == text  # seeded
    other = export_pairs(matched, tmp_path / "other.csv", tmp_path / "other.json", seed=4)
    assert other[0].read_text() != text


def test_two_and_three_annotators_agreement_kappa_and_consensus(exported, tmp_path):
    _, csv_path, key_path = exported
    first = {i: "A" if i % 3 else "B" for i in range(N)}
    second = {i: first[i] if i % 4 else "tie" for i in range(N)}
    second[1] = "B"  # now items 0, 4, 8, 12, 16 are A|B vs tie and item 1 is A vs B
    one = fill(csv_path, tmp_path / "one.csv", labels_for(key_path, first))
    two = fill(csv_path, tmp_path / "two.csv", labels_for(key_path, second))
    result = import_labels([one, two], key_path)
    x, y = list(first.values()), list(second.values())
    assert result.agreement == pytest.approx(sum(u == v for u, v in zip(x, y)) / N)
    assert result.kappa == pytest.approx(cohen_kappa(x, y)) and result.disagreements == 6
    three = import_labels([one, two, fill(csv_path, tmp_path / "three.csv", labels_for(key_path, first))], key_path)
    pairs = [(x, y), (x, x), (y, x)]
    assert three.kappa == pytest.approx(sum(cohen_kappa(u, v) for u, v in pairs) / 3)
    assert three.agreement == pytest.approx((2 * result.agreement + 1) / 3)


def test_kappa_is_nan_when_undefined_and_1_for_perfect_agreement():
    assert math.isnan(cohen_kappa(["A"] * 5, ["A"] * 5))  # one label only: chance agreement is 1
    assert cohen_kappa(["A", "B", "tie"], ["A", "B", "tie"]) == pytest.approx(1.0)


def test_cohen_kappa_matches_the_textbook_value():
    # 50 items rated yes/no: 20 yes-yes, 5 yes-no, 10 no-yes, 15 no-no -> p_o 0.7, p_e 0.5, kappa 0.4
    x = ["yes"] * 25 + ["no"] * 25
    y = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(x, y) == pytest.approx(0.4)
    assert cohen_kappa(x, x) == 1.0 and math.isnan(cohen_kappa(["tie"] * 3, ["tie"] * 3))


def test_consensus_of_three_and_position_bias(exported, tmp_path):
    _, csv_path, key_path = exported
    key_items = list(json.loads(key_path.read_text())["items"].values())
    votes = [{0: "A", 1: "A", 2: "A"}, {0: "A", 1: "B", 2: "tie"}, {0: "B", 1: "B", 2: "both_bad"}]
    files = [fill(csv_path, tmp_path / f"ann{k}.csv", labels_for(key_path, v)) for k, v in enumerate(votes)]
    result = import_labels(files, key_path)
    assert [r["label"] for r in result.rows] == ["A", "B", "tie"]  # 2 of 3, 2 of 3, no majority -> tie
    assert result.unlabeled == N - 3 and result.disagreements == 3 and result.kappa is not None
    decisive = [(v, key_items[i]["a_is"]) for vote in votes for i, v in vote.items() if v in ("A", "B")]
    picks_1 = sum((v == "A") == (a_is == 1) for v, a_is in decisive)
    assert (result.position_1, result.decisive_labels) == (picks_1, len(decisive)) and len(decisive) == 7
    assert any(line.startswith("position bias: response 1 chosen in") for line in describe_human(result))


def test_bad_label_files_name_the_file_line_and_field(exported, tmp_path):
    _, csv_path, key_path = exported
    ids = [r["item_id"] for r in read_csv(csv_path)]
    bad = fill(csv_path, tmp_path / "bad.csv", {ids[0]: "1", ids[2]: "maybe"})
    with pytest.raises(DataError, match=r"bad.csv:4: field 'label' is 'maybe'\. Fix: write 1, 2, tie or both_bad"):
        import_labels([bad], key_path)
    unknown = tmp_path / "unknown.csv"
    fill(csv_path, unknown, {})
    unknown.write_text(unknown.read_text().replace(ids[1], "q00000000"))
    with pytest.raises(DataError, match=r"unknown.csv:3: item_id 'q00000000' is not in the key .*Fix:"):
        import_labels([unknown], key_path)
    dup = tmp_path / "dup.csv"
    fill(csv_path, dup, {})
    dup.write_text(dup.read_text().replace(ids[1], ids[0]))
    with pytest.raises(DataError, match=r"dup.csv:3: item_id .* repeats line 2\. Fix:"):
        import_labels([dup], key_path)
    no_label = fill(csv_path, tmp_path / "nolabel.csv", {}, header=("item_id", "prompt", "notes"))
    with pytest.raises(DataError, match=r"nolabel.csv:1: column 'label' is missing .*Fix: keep the header row"):
        import_labels([no_label], key_path)
    empty = fill(csv_path, tmp_path / "empty.csv", {})
    with pytest.raises(DataError, match="no item is labeled"):
        import_labels([empty], key_path)
    (tmp_path / "other.json").write_text('{"kind": "something else"}')
    with pytest.raises(DataError, match="not a human-eval key"):
        import_labels([empty], tmp_path / "other.json")
    with pytest.raises(DataError, match="not a readable key"):
        import_labels([empty], tmp_path / "a.jsonl")
    with pytest.raises(DataError, match="is given twice"):
        import_labels([bad, bad], key_path)


def test_blank_labels_are_counted_and_excluded(exported, tmp_path):
    _, csv_path, key_path = exported
    part = labels_for(key_path, {i: "A" for i in range(12)})
    one = fill(csv_path, tmp_path / "one.csv", part)
    two = fill(csv_path, tmp_path / "two.csv", dict(list(part.items())[:5]))
    result = import_labels([one, two], key_path)
    assert result.win.n == 12 and result.unlabeled == N - 12 and result.blank == {str(one): 8, str(two): 15}
    assert result.agreement == 1.0  # over the 5 items both labeled
    assert any("12 of 20 items labeled, 8 unlabeled (excluded)" in line for line in describe_human(result))


def test_cli_export_then_import(tmp_path):
    a = records(tmp_path, "a.jsonl", [f"Answer {i} with some words." for i in range(N)])
    b = records(tmp_path, "b.jsonl", [f"no {i}" for i in range(N)])
    csv_path, key_path = tmp_path / "pairs.csv", tmp_path / "key.json"
    runner = CliRunner()
    export = ["eval", "human", "export", "--a", str(a), "--b", str(b), "--out", str(csv_path), "--key", str(key_path)]
    result = runner.invoke(app, export)
    assert result.exit_code == 0, result.output
    assert f"wrote {N} pairs to {csv_path}" in result.output and "instructions for annotators" in result.output
    again = runner.invoke(app, export)
    assert isinstance(again.exception, UserError) and "exists" in str(again.exception)
    assert "Fix: choose another --key, or pass --force" in str(again.exception)
    forced_key = runner.invoke(app, [*export, "--force"])  # the CSV exists too: it needs its own consent
    assert isinstance(forced_key.exception, UserError) and "--overwrite" in str(forced_key.exception)
    assert runner.invoke(app, [*export, "--force", "--overwrite"]).exit_code == 0
    wants = {i: "A" if i < 15 else "B" for i in range(N)}
    filled = fill(csv_path, tmp_path / "filled.csv", labels_for(key_path, wants))
    out, summary = tmp_path / "judged.jsonl", tmp_path / "summary.json"
    imported = runner.invoke(app, ["eval", "human", "import", str(filled), "--key", str(key_path), "--out", str(out),
                                   "--json", str(summary)])  # fmt: skip
    assert imported.exit_code == 0, imported.output
    assert "a.jsonl vs b.jsonl on 20 prompts: 15 wins, 0 ties, 5 losses" in imported.output
    data = json.loads(summary.read_text())
    expected = dataclasses.asdict(import_labels([filled], key_path).win)
    assert data["kind"] == "winrate" and data["judge"] == "human" and data["a"] == "a.jsonl" and data["b"] == "b.jsonl"
    assert data["wins"] == 15 and data["rate"] == expected["rate"] and data["wilson"] == list(expected["wilson"])
    assert data["human"]["annotators"] == [str(filled)] and data["human"]["agreement"] is None
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == N and set(rows[0]) >= {"item_id", "source", "label", "outcome", "length_diff"}


def test_cli_refuses_outputs_that_would_destroy_inputs_or_keys(tmp_path):
    a = records(tmp_path, "a.jsonl", ["x"] * N)
    csv_path, key_path = tmp_path / "pairs.csv", tmp_path / "key.json"
    base = ["eval", "human", "export", "--b", str(a)]
    cases = [
        (["--a", str(a), "--out", str(a), "--key", str(key_path)], "is an input of this command"),
        (["--a", str(a), "--out", str(csv_path), "--key", str(a), "--force"], "is an input of this command"),
        (["--a", str(a), "--out", str(csv_path), "--key", str(csv_path)], "is also --out"),
    ]
    runner = CliRunner()
    for args, message in cases:
        result = runner.invoke(app, base + args)
        assert isinstance(result.exception, UserError) and message in str(result.exception), (args, result.output)
    assert runner.invoke(app, [*base, "--a", str(a), "--out", str(csv_path), "--key", str(key_path)]).exit_code == 0
    importing = ["eval", "human", "import", str(csv_path), "--key", str(key_path)]
    for extra, message in [(["--out", str(key_path)], "is an input of"), (["--json", str(csv_path)], "is an input")]:
        result = runner.invoke(app, importing + extra)
        assert isinstance(result.exception, UserError) and message in str(result.exception), (extra, result.output)
