"""`alignkit eval math` and `evaluate_math`: exact scores on a model whose greedy output is known, the Wilson
interval, pass@k over k samples, per-category accuracy, the CLI end to end, and every bad-input error."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import shared_data_path, tiny_llama, write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.data import Tokenizer
from alignkit.errors import DataError, UserError
from alignkit.eval import accuracy as eval_math
from alignkit.eval.accuracy import evaluate_math
from alignkit.generation.sampler import Completion, Sampler, SamplingParams
from alignkit.models import load_model, load_tokenizer
from alignkit.rewards.verifiers.math import extract_answer
from alignkit.stats import wilson_interval

PROMPTS = [f"What is {i} plus {i + 1}?" for i in range(6)]


@pytest.fixture(scope="module")
def digit_model_dir(tmp_path_factory, embedded_tokenizer) -> str:
    """A tiny Llama whose head scores only the tokens '1' (+v.h) and '2' (-v.h): one of them always wins greedily,
    so every greedy completion is a string of digits, a number the verifier extracts."""
    path = tmp_path_factory.mktemp("digit-llama")
    model = tiny_llama(vocab_size=len(embedded_tokenizer), tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=2, max_position_embeddings=512)  # fmt: skip
    one, two = embedded_tokenizer.convert_tokens_to_ids(["1", "2"])
    with torch.no_grad():
        v = torch.randn(model.lm_head.weight.shape[1], generator=torch.Generator().manual_seed(0))
        model.lm_head.weight.zero_()
        model.lm_head.weight[one], model.lm_head.weight[two] = v, -v
    model.save_pretrained(path)
    embedded_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def digit_model(digit_model_dir):
    return load_model(digit_model_dir), load_tokenizer(digit_model_dir)


def greedy_texts(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    out = Sampler(model, Tokenizer(tokenizer)).generate(
        prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    )
    return [c[0].text for c in out]


def wilson_by_hand(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center - half, center + half


# --------------------------------------------------------------------------------------------- the API


def test_known_case_greedy(digit_model):
    model, tokenizer = digit_model
    texts = greedy_texts(model, tokenizer, PROMPTS, 5)
    answers = [extract_answer(t) for t in texts]
    assert all(a is not None and a.isdigit() for a in answers), texts
    # even records: the model's own answer (right); odd ones: a different number (wrong)
    records = [
        {"prompt": p, "answer": a if i % 2 == 0 else str(int(a) + 1), "category": "right" if i % 2 == 0 else "wrong"}
        for i, (p, a) in enumerate(zip(PROMPTS, answers))
    ]
    result = evaluate_math(model, tokenizer, records, max_new_tokens=5)
    assert (result.n, result.samples, result.accuracy) == (6, 1, 0.5)
    assert result.pass_at_k == {1: 0.5}
    assert result.per_category == {"right": {"n": 3, "accuracy": 1.0}, "wrong": {"n": 3, "accuracy": 0.0}}
    assert result.no_answer == 0.0 and result.mean_length == 5.0 and result.truncated == 1.0
    assert result.interval == pytest.approx(wilson_by_hand(3, 6))
    assert [r["completions"] for r in result.records] == [[t] for t in texts]
    assert [r["extracted"] for r in result.records] == [[a] for a in answers]
    assert [r["rewards"] for r in result.records] == [[1.0], [0.0]] * 3
    assert result.records[1]["answer"] == records[1]["answer"] and result.records[0]["source"] == "records[0]"
    summary = result.summary()
    assert summary["accuracy"] == 0.5 and summary["accuracy/right"] == 1.0 and "records" not in summary
    json.dumps(summary)
    assert any("accuracy 0.5000 (3 of 6 completions correct)" in line for line in result.lines())


def test_prompts_go_through_the_chat_template_and_records_can_come_from_a_file(digit_model, tmp_path, monkeypatch):
    model, tokenizer = digit_model
    seen = []
    real = Sampler.sample
    monkeypatch.setattr(
        Sampler, "sample", lambda self, ids, params, seeds: seen.extend(ids) or real(self, ids, params, seeds)
    )
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "What is 1 plus 1?", "answer": "It is 2.\n#### 2"}] * 3)
    result = evaluate_math(model, tokenizer, str(path), max_new_tokens=2, prompt_field="question", limit=2)
    assert result.n == 2 and result.records[1]["source"] == f"{path}:2"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1 plus 1?"}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert seen[0] == Tokenizer(tokenizer).with_bos(Tokenizer(tokenizer).encode(chat))
    assert result.records[0]["gold"] == "2"
    result = evaluate_math(model, tokenizer, str(path), max_new_tokens=2, prompt_field="question",
                           prompt_template="Q: {question}", limit=1)  # fmt: skip
    assert result.records[0]["prompt"] == "Q: What is 1 plus 1?"


def test_wilson_interval_against_statsmodels_and_by_hand():
    from statsmodels.stats.proportion import proportion_confint

    assert wilson_interval(7, 20) == pytest.approx((0.18119182410108203, 0.5671457233147638))
    assert wilson_interval(7, 20) == pytest.approx(wilson_by_hand(7, 20))
    assert wilson_interval(7, 20) == pytest.approx(proportion_confint(7, 20, method="wilson"))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == pytest.approx(1.0)
    assert wilson_interval(2.5, 10) == pytest.approx(wilson_by_hand(2.5, 10))  # fractional successes (k > 1)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def scripted(texts_per_prompt: list[list[str]]):
    """A stand-in for Sampler.sample returning fixed completions (and recording the params it was called with)."""
    calls = []

    def sample(self, ids, params, seeds):
        calls.append((len(ids), params, list(seeds)))
        return [
            [Completion([7] * (j + 1), [0.0] * (j + 1), "eos", t) for j, t in enumerate(row)]
            for row in texts_per_prompt
        ]

    return sample, calls


def test_pass_at_k_per_category_and_no_answer_with_k_samples(digit_model, monkeypatch):
    model, tokenizer = digit_model
    rows = [
        ["Answer: 3", "Answer: 4", "no idea", "so 5"],  # 1 of 4 right, 1 without an answer
        ["Answer: 1", "Answer: 1", "Answer: 1", "Answer: 1"],  # none right
        ["#### 9", "9", "the answer is 9.", "Answer: 9"],  # all right
    ]
    sample, calls = scripted(rows)
    monkeypatch.setattr(Sampler, "sample", sample)
    records = [
        {"prompt": "a", "answer": "3", "category": "x"},
        {"prompt": "b", "answer": "2", "category": "x"},
        {"prompt": "c", "answer": "9", "category": "y"},
    ]
    result = evaluate_math(model, tokenizer, records, samples=4, temperature=0.7, max_new_tokens=8, seed=10)
    ((n_prompts, params, seeds),) = calls
    assert n_prompts == 3 and params.n == 4 and params.temperature == 0.7 and seeds == [10, 11, 12]
    assert result.accuracy == pytest.approx((0.25 + 0 + 1) / 3)
    assert result.pass_at_k == pytest.approx({1: (0.25 + 0 + 1) / 3, 4: 2 / 3})
    assert result.per_category == {"x": {"n": 2, "accuracy": 0.125}, "y": {"n": 1, "accuracy": 1.0}}
    assert result.no_answer == pytest.approx(1 / 12) and result.mean_length == pytest.approx(2.5)
    assert result.interval == pytest.approx(wilson_by_hand(result.accuracy * 3, 3))  # over prompts, not samples
    assert result.records[0]["extracted"] == ["3", "4", None, "5"] and result.records[0]["rewards"] == [1, 0, 0, 0]
    assert any("pass@4 0.6667" in line for line in result.lines())


def test_real_sampling_gives_k_distinct_seeded_samples(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    records = [{"prompt": p, "answer": "1"} for p in PROMPTS[:2]]
    a = evaluate_math(model, tokenizer, records, samples=3, temperature=1.0, max_new_tokens=6, seed=3)
    b = evaluate_math(model, tokenizer, records, samples=3, temperature=1.0, max_new_tokens=6, seed=3)
    assert [len(r["completions"]) for r in a.records] == [3, 3] and a.records == b.records
    assert len(set(a.records[0]["completions"])) > 1 and set(a.pass_at_k) == {1, 3} and a.per_category == {}


# --------------------------------------------------------------------------------------------- bad input


def test_bad_input_errors(digit_model, tmp_path):
    model, tokenizer = digit_model
    good = [{"prompt": "p", "answer": "1"}]
    with pytest.raises(UserError, match="does not exist"):
        evaluate_math(model, tokenizer, str(tmp_path / "missing.jsonl"))
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "answer": "1"}, {"question": "q", "answer": "2"},
                                                 {"prompt": "p"}, {"prompt": "p", "answer": ""}])  # fmt: skip
    with pytest.raises(DataError) as e:
        evaluate_math(model, tokenizer, str(path))
    message = str(e.value)
    assert (
        f"{path}:2: field 'prompt': is missing (text fields here: question, answer)" in message
        and "--prompt-field" in message
    )
    assert f"{path}:3: field 'answer': is missing" in message and f"{path}:4: field 'answer': is ''" in message
    assert "3 invalid record(s)" in message and "Fix:" in message
    with pytest.raises(UserError, match="samples is 0"):
        evaluate_math(model, tokenizer, good, samples=0)
    with pytest.raises(UserError, match="all samples of a prompt would be identical"):
        evaluate_math(model, tokenizer, good, samples=2, temperature=0.0)
    with pytest.raises(UserError, match="temperature is -1"):
        evaluate_math(model, tokenizer, good, temperature=-1.0)
    with pytest.raises(UserError, match="limit is 0"):
        evaluate_math(model, tokenizer, good, limit=0)
    with pytest.raises(UserError, match="exceed the model's 512 positions"):
        evaluate_math(model, tokenizer, good, max_new_tokens=600)


# --------------------------------------------------------------------------------------------- the CLI


def alignkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignkit", *args], capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(digit_model, digit_model_dir, tmp_path):
    texts = greedy_texts(*digit_model, PROMPTS, 4)
    records = [{"prompt": p, "answer": extract_answer(t), "category": "c"} for p, t in zip(PROMPTS, texts)]
    records[1]["answer"] = "0"
    data, out = write_jsonl(tmp_path / "data.jsonl", records), tmp_path / "results.jsonl"
    proc = alignkit("eval", "math", "--model", digit_model_dir, "--data", str(data), "--limit", "4",
                    "--max-new-tokens", "4", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (
        "4 prompts x 1 sample(s), greedy" in proc.stdout
        and "accuracy 0.7500 (3 of 4 completions correct)" in proc.stdout
    )
    assert (
        f"95% Wilson interval over the 4 prompts [{wilson_by_hand(3, 4)[0]:.4f}, {wilson_by_hand(3, 4)[1]:.4f}]"
        in proc.stdout
    )
    assert "per category: c 0.750 (n 4)" in proc.stdout and "no answer 0.0% of completions" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and [r["rewards"] for r in rows] == [[1.0], [0.0], [1.0], [1.0]]
    assert set(rows[0]) >= {"prompt", "answer", "completions", "extracted", "rewards"}
    assert rows[0]["completions"] == [texts[0]]


def test_cli_bad_input(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "answer": "1"}, {"prompt": "p"}])
    runner = CliRunner()
    cases = [
        (["--data", str(tmp_path / "missing.jsonl")], "does not exist"),
        (["--data", str(data)], f"{data}:2: field 'answer': is missing"),
        (["--data", str(data), "--prompt-field", "question"], f"{data}:1: field 'question': is missing"),
        (["--data", str(data), "--samples", "0"], "samples is 0"),
        (["--data", str(data), "--samples", "4", "--temperature", "0"], "would be identical"),
        (["--data", str(data), "--out", str(data)], "is an input of this command"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", "math", "--model", tiny_model_dir, *args])
        assert isinstance(result.exception, UserError) and message in str(result.exception), (args, result.output)
    # through main(): one message, exit status 2, no traceback
    proc = alignkit("eval", "math", "--data", str(data), "--samples", "4", "--temperature", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "would be identical" in proc.stderr


def test_default_temperature_with_samples(monkeypatch, digit_model_dir, tmp_path):
    captured = {}

    def fake(model, tokenizer, examples, samples, temperature, max_new_tokens, **kw):
        captured.update(samples=samples, temperature=temperature)
        raise SystemExit(0)

    monkeypatch.setattr(eval_math, "evaluate_math", fake)
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "answer": "1"}])
    CliRunner().invoke(app, ["eval", "math", "--model", digit_model_dir, "--data", str(data), "--samples", "3"])
    assert captured == {"samples": 3, "temperature": 1.0}


# --------------------------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_embedded_model_with_the_calculator_on_held_out_templates(tmp_path):
    """The embedded model answers in calculator episodes (two worked calls in its prompt): it calls the tool, reads
    the result and answers; the records hold the transcripts."""
    out = tmp_path / "r.jsonl"
    proc = CliRunner().invoke(app, ["eval", "math", "--data", "builtin:arithmetic_tools_heldout.jsonl", "--limit",
                                    "4", "--max-new-tokens", "32", "--environment", "calculator", "--environment-arg",
                                    "demonstrations=true", "--max-turns", "2", "--out", str(out)])  # fmt: skip
    assert proc.exit_code == 0, proc.output
    assert "4 prompts x 1 sample(s), greedy" in proc.stdout and "in the calculator environment" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and sum(r["tool_calls"][0] > 0 for r in rows) >= 2, proc.stdout
    called = next(r for r in rows if r["tool_calls"][0] > 0)
    assert "<tool_call>" in called["transcripts"][0] and "<|im_start|>tool" in called["transcripts"][0]
    assert called["turns"][0] >= 2 and "used a tool" in proc.stdout
    bad = CliRunner().invoke(app, ["eval", "math", "--data", "builtin:arithmetic_tools_heldout.jsonl",
                                   "--environment", "nowhere:Env"])  # fmt: skip
    assert isinstance(bad.exception, UserError) and "no module named 'nowhere'" in str(bad.exception)


@pytest.mark.slow
def test_embedded_model_on_gsm8k():
    path = shared_data_path("gsm8k", "test-part1.jsonl")
    if not path.is_file():
        pytest.skip(f"shared data file {path} is not present in this checkout")
    proc = alignkit("eval", "math", "--data", str(path), "--prompt-field", "question", "--limit", "3",
                    "--max-new-tokens", "64")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "3 prompts x 1 sample(s), greedy" in proc.stdout and "accuracy" in proc.stdout


def test_cli_prompt_template_with_a_newline(digit_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "What is 1 plus 1?", "answer": "#### 2"}] * 2)
    out = tmp_path / "r.jsonl"
    args = ["eval", "math", "--model", digit_model_dir, "--data", str(data), "--prompt-field", "question",
            "--prompt-template", "Q: {question}\\nAnswer with a number.", "--limit", "1", "--max-new-tokens", "2",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt"] == "Q: What is 1 plus 1?\nAnswer with a number." and row["gold"] == "2"
