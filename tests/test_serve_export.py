"""``alignkit.serve.export`` through a real store: kto / pairs / sft files that the trainers' readers accept unchanged,
the cleaning counts, identity-revealing comparison votes dropped, and ``alignkit feedback export`` with bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from alignkit.data import read_records, to_binary, to_pairwise, to_sft, validate_records
from alignkit.errors import DataError, UserError
from alignkit.serve.export import export_feedback, identity_names, prompt_messages, reveals_identity
from alignkit.serve.store import Store

LONG = "a long enough answer"


def user(text):
    return [{"role": "user", "content": text}]


def response(rid, prompt, content, variant="base", model="smollm2-135m-instruct", t=1000.0):
    return {"id": rid, "variant": variant, "model": model, "messages": user(prompt), "content": content,
            "created": t, "completion_tokens": len(content.split()), "params": {}, "flags": []}  # fmt: skip


def comparison(cid, ra, rb, prompt, va="base", vb="cand", a_shown="left"):
    return {"id": cid, "messages": user(prompt), "response_a": ra, "response_b": rb, "variant_a": va,
            "variant_b": vb, "a_shown": a_shown, "created": 1000.0}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Thumbs on 4 prompts (with a biased rater, a duplicate, a short answer, a changed mind and a bad prompt) and
    comparisons (a, b, tie, both bad, two identity reveals, a missing response)."""
    path = tmp_path_factory.mktemp("export") / "serve.sqlite"
    s = Store(str(path))
    rows = [
        response("r1", "What is 2+2?", f"It is 4, {LONG}."),
        response("r2", "What is 2+2?", f"It is 5, {LONG}.", variant="cand"),
        response("r3", "What is 2+2?", f"It is 4, {LONG}."),  # same answer as r1: a duplicate record
        response("r4", "Name a colour.", "Blue."),  # under 10 characters
        response("r5", "Name a colour.", f"Blue is a colour, {LONG}."),
        response("r6", "Name a colour.", f"Red is a colour, {LONG}.", variant="cand"),
        response("bad", "x", f"An answer, {LONG}."),
    ]
    rows[-1]["messages"] = [{"role": "assistant", "content": "no user turn"}]  # cannot be a prompt
    rows += [response(f"y{i}", f"Yes-man question {i}?", f"Answer {i}, {LONG}.") for i in range(5)]
    rows += [
        response("ca", "Tell me a joke.", f"Why did the chicken cross the road? {LONG}."),
        response("cb", "Tell me a joke.", f"Knock knock, {LONG}.", variant="cand"),
        response("cc", "Who are you?", "I am SmolLM, a helpful assistant made for you.", variant="cand"),
        response("cd", "Who are you?", f"Just an assistant, {LONG}."),
        response("ce", "Which model?", "You are talking to cand, the new one.", variant="cand"),
        response("cf", "Which model?", f"Hello there, {LONG}."),
    ]
    s.add_responses(rows)
    ratings = [("r1", "up", "u1"), ("r2", "down", "u1"), ("r3", "up", "u2"), ("r4", "up", "u2"), ("r5", "down", "u3"),
               ("r5", "up", "u3"), ("r6", "down", "u2"), ("bad", "up", "u1")]  # fmt: skip
    for rid, value, rater in ratings:
        s.add_feedback(rid, value, user_hash=rater)  # u3 changes r5 from down to up: the store keeps the latest
    for i in range(5):
        s.add_feedback(f"y{i}", "up", user_hash="yes-man")  # approves everything: removed as biased
    s.add_comparison(comparison("c-a", "ca", "cb", "Tell me a joke."))
    s.add_comparison(comparison("c-b", "cb", "ca", "Tell me a joke.", va="cand", vb="base", a_shown="right"))
    s.add_comparison(comparison("c-tie", "ca", "cb", "Tell me a joke."))
    s.add_comparison(comparison("c-bad", "ca", "cb", "Tell me a joke."))
    s.add_comparison(comparison("c-smol", "cd", "cc", "Who are you?"))  # "I am SmolLM"
    s.add_comparison(comparison("c-name", "cf", "ce", "Which model?"))  # the variant's name
    s.add_comparison(comparison("c-open", "ca", "cb", "Tell me a joke."))  # never voted
    for cid, vote in [("c-a", "a"), ("c-b", "b"), ("c-tie", "tie"), ("c-bad", "both_bad"), ("c-smol", "b"),
                      ("c-name", "a")]:  # fmt: skip
        s.add_vote(cid, vote)
    yield s
    s.close()


def load(path, convert):
    """Read back with the trainers' readers; any invalid record raises."""
    return validate_records(read_records(str(path)), convert, on_invalid="error")[0]


# ============================================================================================ kto


def test_kto_records_are_cleaned_and_load_in_the_trainers(store, tmp_path):
    report = export_feedback(store, "kto", tmp_path / "kto.jsonl")
    examples = load(tmp_path / "kto.jsonl", to_binary)
    raw = [rec for _, rec in read_records(str(tmp_path / "kto.jsonl"))]
    assert [r["response_id"] for r in raw] == ["r1", "r2", "r5", "r6"]
    assert [e.label for e in examples] == [True, False, True, False]
    answer = [{"role": "assistant", "content": f"It is 4, {LONG}."}]
    assert raw[0] == {"prompt": user("What is 2+2?"), "completion": answer,
                      "label": True, "user_id": "u1", "response_id": "r1", "variant": "base"}  # fmt: skip
    assert raw[1]["variant"] == "cand" and raw[2]["user_id"] == "u3"
    assert report.written == 4 and report.read == {"ratings": 12}
    assert report.dropped == {"invalid": 1}
    removed = {rule: len(v) for rule, v in report.clean.removed.items()}
    assert removed == {"rater_bias": 5, "duplicate": 1, "too_short": 1}
    assert [r.user_id for r in report.clean.raters] == ["yes-man"]
    text = "\n".join(report.lines())
    assert "thumbs cleaning: read 11 records, kept 4" in text and "wrote 4 kto records to" in text


def test_cleaning_options_are_passed_on(store, tmp_path):
    report = export_feedback(store, "kto", tmp_path / "kto.jsonl", min_ratings=50, min_chars=0)
    assert report.written == 10  # nobody has 50 ratings; the short answer stays; the duplicate still goes
    assert report.clean.removed["duplicate"] and not report.clean.removed["too_short"]
    with pytest.raises(DataError, match="min_rate 0.9, max_rate 0.1"):
        export_feedback(store, "kto", tmp_path / "x.jsonl", min_rate=0.9, max_rate=0.1)
    with pytest.raises(TypeError, match="unknown cleaning option"):
        export_feedback(store, "kto", tmp_path / "x.jsonl", min_stars=3)


# ============================================================================================ pairs


def test_pairs_from_thumbs_and_votes_without_identity_reveals(store, tmp_path):
    report = export_feedback(store, "pairs", tmp_path / "pairs.jsonl")
    pairs = load(tmp_path / "pairs.jsonl", to_pairwise)
    raw = [rec for _, rec in read_records(str(tmp_path / "pairs.jsonl"))]
    assert [r["source"] for r in raw] == ["thumbs", "thumbs", "comparison"]
    assert [(p.chosen[0]["content"][:9], p.rejected[0]["content"][:9]) for p in pairs] == [
        ("It is 4, ", "It is 5, "), ("Blue is a", "Red is a "), ("Why did t", "Knock kno")
    ]  # fmt: skip
    assert pairs[2].prompt == tuple(user("Tell me a joke."))
    # c-a and c-b are the same preference (b of c-b is ca): the second is a duplicate pair
    assert report.dropped == {"invalid": 1, "tie": 1, "both_bad": 1, "identity_revealed": 2,
                              "duplicate_pair": 1}  # fmt: skip
    assert report.sources == {"thumbs": 2, "comparison": 1}
    assert report.read == {"ratings": 12, "comparison votes": 6}
    assert set(report.revealed) == {"I am SmolLM", "cand"}
    assert "identity revealed by e.g." in "\n".join(report.lines())


# ============================================================================================ sft


def test_sft_keeps_the_cleaned_thumbs_up_answers(store, tmp_path):
    report = export_feedback(store, "sft", tmp_path / "sft.jsonl")
    examples = load(tmp_path / "sft.jsonl", to_sft)
    assert [e.completion[0]["content"][:9] for e in examples] == ["It is 4, ", "Blue is a"]
    assert examples[0].prompt == tuple(user("What is 2+2?"))
    assert report.dropped["thumbs_down"] == 2 and report.written == 2


# ============================================================================================ empty and bad


def test_nothing_left_is_a_clear_error_and_writes_nothing(store, tmp_path):
    out = tmp_path / "empty.jsonl"
    with pytest.raises(DataError, match="no kto records to write") as e:
        export_feedback(store, "kto", out, since=2e12)  # no feedback this late
    assert "Fix: kto needs thumbs ratings" in str(e.value) and "read 0 ratings" in str(e.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="Fix: sft needs thumbs-up ratings"):
        export_feedback(store, "sft", out, min_rate=0.0, max_rate=0.0, min_ratings=1)  # every rater is biased
    assert not out.exists()


def test_bad_format_and_directory(store, tmp_path):
    with pytest.raises(DataError, match="format 'dpo': unknown. Fix: use one of kto, pairs, sft"):
        export_feedback(store, "dpo", tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        export_feedback(store, "kto", tmp_path)


# ============================================================================================ helpers


def test_reveals_identity_phrases_and_names():
    for text in ("I am SmolLM, a small model.", "As an AI developed by OpenAI, I can't.", "I'm Claude.",
                 "I am ChatGPT.", "I was trained by Google DeepMind.",
                 "As a large language model trained by Mistral AI",
                 "I'm Llama 3, nice to meet you.", "My creators are Anthropic."):  # fmt: skip
        assert reveals_identity(text), text
    for text in ("Android was developed by Google.", "I am happy to help.", "As an assistant, I help.",
                 "Llamas are camelids."):  # fmt: skip
        assert reveals_identity(text) is None, text
    names = identity_names("dpo-v2", "base", "runs/dpo/model", "a", None)
    assert names == ["dpo-v2", "runs/dpo/model"]  # generic and short names would match ordinary answers
    assert reveals_identity("Hi, DPO-v2 here.", names) == "DPO-v2"
    assert reveals_identity("dpo-v2x and xdpo-v2", names) is None


def test_prompt_messages_normalizes_or_refuses():
    content = [{"type": "text", "text": "Hi"}, {"type": "image_url"}]
    parts = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": content, "name": "x"}]
    assert prompt_messages(parts) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for bad in (None, [], "hi", [{"role": "assistant", "content": "x"}], [{"role": "tool", "content": "x"}],
                [{"role": "user", "content": "  "}], [{"role": "user", "content": 3}]):  # fmt: skip
        assert prompt_messages(bad) is None, bad


# ============================================================================================ the command


def run_cli(*args):
    from alignkit.cli.main import app

    return CliRunner().invoke(app, ["feedback", "export", *args])


def test_export_command_writes_and_reports(store, tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = run_cli("--db", store.path, "--format", "pairs", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "read 12 ratings, 6 comparison votes" in result.output
    assert "dropped 2: comparison votes where a response revealed its model" in result.output
    assert f"wrote 3 pairs records to {out}" in result.output
    assert len(load(out, to_pairwise)) == 3


def test_export_command_passes_the_cleaning_options(store, tmp_path):
    out = tmp_path / "kto.jsonl"
    result = run_cli("--db", store.path, "-f", "kto", "-o", str(out), "--min-ratings", "50", "--min-chars", "0")
    assert result.exit_code == 0, result.output
    assert len(load(out, to_binary)) == 10


@pytest.mark.parametrize(
    "args,message",
    [
        (["--format", "dpo"], "--format dpo: unknown. Fix: use one of kto, pairs, sft"),
        (["--format", "kto", "--out", "{tmp}"], "is a directory. Fix: give a file name"),
        (["--format", "kto", "--min-ratings", "0"], "--min-ratings 0"),
        (["--format", "pairs", "--max-pairs-per-prompt", "0"], "--max-pairs-per-prompt 0. Fix: use 1 or more"),
        (["--format", "kto", "--min-rate", "0.9", "--max-rate", "0.1"], "Fix: e.g. --min-rate 0.1 --max-rate 0.9"),
        (["--format", "kto", "--since", "soon"], "--since soon: not a time"),
        (["--format", "kto", "--since", "2e12"], "no kto records to write"),
        (["--format", "kto", "--db", "{tmp}/nope.sqlite"], "nope.sqlite does not exist"),
    ],
)
def test_export_command_bad_input_is_one_clear_error(store, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.jsonl")]
    if "--db" not in args:
        args += ["--db", store.path]
    result = run_cli(*args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "nope.sqlite").exists()
