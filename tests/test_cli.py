"""The `alignkit` command end to end on the tiny model: train, merge, generate, config, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import pair_records
from helpers import cli, write_jsonl


def sets(*pairs: str) -> list[str]:
    """["--set", pair, "--set", pair, ...]"""
    return [arg for pair in pairs for arg in ("--set", pair)]


def alignkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignkit", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def tiny_config(tmp_path: Path, model_dir: str, train: str, **extra) -> Path:
    cfg = {
        "model": {"name": model_dir, "device": "cpu", "dtype": "fp32"},
        "lora": {"r": 4},
        "data": {"train": train, "max_length": 64},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
        },
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_merge_generate(tiny_model_dir, pairs_file, tmp_path):
    cfg = tiny_config(tmp_path, tiny_model_dir, pairs_file)
    proc = alignkit("train", "dpo", "--config", str(cfg), "--set", "method.beta=0.2")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "run"
    assert "global batch = 2 per device x 1 accumulation x 1 process(es) = 2 examples/step" in proc.stdout
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["method"]["beta"] == 0.2 and saved["method"]["loss"] == "dpo"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

    merged = tmp_path / "merged"
    result = invoke("merge", str(run_dir / "model"), "--out", str(merged))  # in process from here on
    assert result.exit_code == 0, result.output
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(merged)  # plain transformers, no peft
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "model")
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    torch.testing.assert_close(plain(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(plain(ids).logits, base(ids).logits)  # the adapter changed something

    result = invoke("generate", "--model", str(merged), "--prompt", "Hello", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(">>> Hello\n")


def test_train_every_method_name_from_the_cli(tiny_model_dir, pairs_file, sft_file, tmp_path):
    """In this process (CliRunner): the command names select the loss; test_train_merge_generate starts the real
    executable."""
    for method in ("ipo", "simpo"):
        cfg = tiny_config(tmp_path, tiny_model_dir, pairs_file)
        result = invoke("train", method, "--config", str(cfg), "--set", f"train.output_dir={tmp_path / method}")
        assert result.exit_code == 0, result.output
        assert yaml.safe_load((tmp_path / method / "config.yaml").read_text())["method"]["loss"] == method
    cfg = tiny_config(tmp_path, tiny_model_dir, sft_file)
    result = invoke("train", "sft", "--config", str(cfg), "--set", f"train.output_dir={tmp_path / 'sft'}")
    assert result.exit_code == 0, result.output


def test_config_command_prints_every_section():
    proc = alignkit("config", "orpo")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert set(cfg) == {"model", "lora", "data", "train", "method"}
    assert cfg["method"]["loss"] == "orpo"


@pytest.mark.parametrize(
    "case",
    ["unknown_field", "bad_choice", "missing_file", "bad_record", "bad_method", "missing_model", "missing_config"],
)
def test_bad_input_gives_one_clear_line(case, tiny_model_dir, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", pair_records(8))
    bad = write_jsonl(tmp_path / "bad.jsonl", pair_records(3) + [{"prompt": "hi", "chosen": "", "rejected": "no"}])
    args, expected = {
        "unknown_field": (["--set", "train.lr=1"], "unknown field 'train.lr'"),
        "bad_choice": (["--set", "data.overlong=cut"], "field 'data.overlong' is 'cut'"),
        "missing_file": (["--set", f"data.train={tmp_path / 'nope.jsonl'}"], "does not exist"),
        "bad_record": (["--set", f"data.train={bad}"], "bad.jsonl:4: field 'chosen': is empty"),
        "bad_method": ([], "unknown method 'dpx'"),
        "missing_model": (["--set", f"model.name={tmp_path / 'no-model'}"], "no such file or directory"),
        "missing_config": (["--config", str(tmp_path / "none.yaml")], "config file"),
    }[case]
    method = "dpx" if case == "bad_method" else "dpo"
    base = sets(f"model.name={tiny_model_dir}", f"data.train={good}", f"train.output_dir={tmp_path / 'out'}")
    code, out = cli("train", method, *base, *args)  # in process; tests/test_bad_input.py runs the executable
    assert code == 2, out
    assert out.strip().startswith("error:") and expected in out


def test_bad_record_with_skip_policy_trains_on_the_rest(tiny_model_dir, tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl", pair_records(8) + [{"prompt": "hi", "chosen": "same", "rejected": "same"}]
    )
    proc = alignkit(
        "train",
        "dpo",
        *sets(
            f"model.name={tiny_model_dir}",
            f"data.train={bad}",
            "data.on_invalid=skip",
            f"train.output_dir={tmp_path / 'out'}",
            "train.max_steps=1",
            "model.dtype=fp32",
        ),
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 invalid record(s)" in proc.stdout and "bad.jsonl:9" in proc.stdout


def test_merge_rejects_a_non_adapter_directory(tiny_model_dir, tmp_path):
    proc = alignkit("merge", tiny_model_dir, "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "is not a LoRA adapter" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_existing_model_survives_a_failed_run(tiny_model_dir, tmp_path):
    """A run that fails on bad input leaves what an earlier run saved untouched."""
    good = write_jsonl(tmp_path / "good.jsonl", pair_records(8))
    common = sets(
        f"model.name={tiny_model_dir}", f"train.output_dir={tmp_path / 'out'}", "train.max_steps=1", "model.dtype=fp32"
    )
    assert invoke("train", "dpo", *common, *sets(f"data.train={good}")).exit_code == 0  # in process: the run itself
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "model").iterdir()}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": 5, "rejected": "y"}])
    failed = invoke("train", "dpo", *common, *sets(f"data.train={bad}", "train.overwrite=true"))
    assert "field 'chosen': must be text" in str(failed.exception)  # bad data fails before the old run is touched
    proc = alignkit("train", "dpo", *common, *sets(f"data.train={good}"))  # the real executable: exit 2, one line
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "train.overwrite=true" in proc.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "model").iterdir()} == before
    assert json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


# ------------------------------------------------------------------------------------------- generate


def invoke(*args: str):
    """``alignkit ARGS`` in this process (CliRunner: no interpreter start); errors stay as exceptions."""
    from typer.testing import CliRunner

    from alignkit.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_generate_n_samples_to_jsonl(tiny_model_dir, tmp_path):
    """--n 3 at temperature 1 with stop strings: one record per prompt, three completions each, what the sampler
    gives for the same seeds (prompt i: seed + i), finish reasons that agree with the tokens and texts."""
    from alignkit.data import Tokenizer
    from alignkit.generation.sampler import Sampler, SamplingParams
    from alignkit.models import load_model, load_tokenizer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\ntell me a joke\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", "-m", tiny_model_dir, "--prompts-file", str(prompts), "--out", str(out), "--dtype", "fp32",
            *"--n 3 --temperature 1 --seed 5 --max-new-tokens 6 --stop th --stop ic".split()]  # fmt: skip
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert f"wrote 2 records (6 completions) to {out}" in res.output and "tokens/s" in res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["Hello", "tell me a joke"]
    expected = Sampler(load_model(tiny_model_dir), Tokenizer(load_tokenizer(tiny_model_dir))).generate(
        ["Hello", "tell me a joke"], SamplingParams(n=3, max_new_tokens=6, temperature=1.0, stop=("th", "ic")), seed=5
    )
    reasons = []
    for record, want in zip(records, expected):
        assert len(record["completions"]) == 3
        for c, w in zip(record["completions"], want):
            assert set(c) == {"text", "finish_reason", "tokens", "logprob"}
            assert (c["text"], c["finish_reason"], c["tokens"]) == (w.text, w.finish_reason, len(w.token_ids))
            assert c["logprob"] == pytest.approx(sum(w.logprobs), abs=1e-5) and c["logprob"] < 0
            assert c["finish_reason"] in ("eos", "stop", "length")
            if c["finish_reason"] == "length":
                assert c["tokens"] == 6 and "th" not in c["text"] and "ic" not in c["text"]
            if c["finish_reason"] == "stop":
                assert 1 <= c["tokens"] <= 6 and "th" not in c["text"] and "ic" not in c["text"]
            reasons.append(c["finish_reason"])
        assert len({c["text"] for c in record["completions"]}) > 1  # samples differ
    assert {"stop", "length"} <= set(reasons)
    assert invoke(*args).exit_code == 1  # out exists: refused without --overwrite
    assert invoke(*args, "--overwrite").exit_code == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == records  # seeded


def test_generate_greedy_is_deterministic_and_prints_each_prompt(tiny_model_dir):
    args = ["generate", "-m", tiny_model_dir, "-p", "Hello", "-p", "tell me a joke", "--max-new-tokens", "5"]
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.output
    body = first.output.rsplit(">>> tell me a joke\n", 1)
    assert first.output.startswith(">>> Hello\n") and len(body) == 2
    assert "10 tokens in" in first.output.splitlines()[-1]  # 2 prompts x 5 tokens, then the speed
    assert first.output.splitlines()[:-1] == second.output.splitlines()[:-1]
    sampled = invoke(*args, "--n", "2", "--temperature", "1")
    assert sampled.exit_code == 0 and "[1] " in sampled.output and "[2] " in sampled.output


def test_generate_function_greedy_matches_transformers_generate(word_model_dir):
    """``alignkit.generation.generate`` (demo, best-of-N) on the sampler: greedy = transformers.generate (the oracle),
    repeated prompts included; at temperature > 0 repeated prompts are distinct seeded samples."""
    from alignkit.data import Tokenizer
    from alignkit.generation import generate
    from alignkit.models import load_model, load_tokenizer

    model, hf_tok = load_model(word_model_dir), load_tokenizer(word_model_dir)
    tok = Tokenizer(hf_tok)
    prompts = ["how is the weather today ?", "tell me a joke", "how is the weather today ?"]
    want = []
    for p in prompts:
        ids = torch.tensor([tok.prompt_ids(({"role": "user", "content": p},))])
        row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, temperature=None, top_p=None,
                             top_k=None)[0, ids.shape[1]:]  # fmt: skip
        want.append(hf_tok.decode(row, skip_special_tokens=True).strip())
    assert len(set(want)) == 2 and all(want)
    assert generate(model, hf_tok, prompts, max_new_tokens=12, batch_size=2) == want
    samples = generate(model, hf_tok, ["tell me a joke"] * 4, max_new_tokens=12, temperature=1.0, seed=3)
    assert len(samples) == 4 and len(set(samples)) > 1
    assert generate(model, hf_tok, ["tell me a joke"] * 4, max_new_tokens=12, temperature=1.0, seed=3) == samples


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--n", "0"], "n is 0"),
        (["--temperature", "-1"], "temperature is -1.0"),
        (["--top-p", "0"], "top_p is 0.0"),
        (["--top-p", "1.5"], "top_p is 1.5"),
        (["--top-k", "-2"], "top_k is -2"),
        (["--min-p", "1"], "min_p is 1.0"),
        (["--max-new-tokens", "0"], "max_new_tokens is 0"),
        (["--stop", ""], "stop is ('',)"),
        (["--n", "3"], "--n 3 with --temperature 0 gives 3 identical greedy completions"),
        (["--max-rows", "0"], "--max-rows 0"),
        (["--dtype", "fp16"], "--dtype fp16: unknown"),
        (["--out", "PROMPTS", "--overwrite"], "is an input of this command; refusing to overwrite it"),
        (["--out", "DIR"], "is a directory"),
    ],
)
def test_generate_bad_options_are_clear_errors(args, expected, tmp_path):
    from alignkit.errors import UserError

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n")
    args = [{"PROMPTS": str(prompts), "DIR": str(tmp_path)}.get(a, a) for a in args]
    res = invoke("generate", "-m", str(tmp_path / "no-model"), "--prompts-file", str(prompts), *args)
    assert isinstance(res.exception, UserError), res.output
    assert expected in str(res.exception) and "Fix:" in str(res.exception)
    assert prompts.read_text() == "Hello\n"


def test_generate_error_is_one_line_from_the_command():
    proc = alignkit("generate", "-p", "hi", "--n", "2")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --n 2 with --temperature 0")
    assert "Traceback" not in proc.stderr
