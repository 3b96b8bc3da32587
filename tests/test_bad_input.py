"""The bad-input corpus: every command family (train, score, generate, best-of-n, merge, eval, judge, cai, verify,
report, feedback, serve, retrain, data, demo) given a mistake a user makes. Each must end in one clear error (exit 2,
``error: ...`` naming the path or field and a ``Fix:``), before any model loads, and change nothing on disk.

Commands run in process (``cli``), as ``alignkit.cli.main.main`` runs them; one case runs the real executable."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import pair_records
from helpers import cli, write_jsonl

from alignkit.errors import UserError


def snapshot(*roots: Path) -> dict:
    """Every file under ``roots`` -> its content hash (a refused command must leave this unchanged)."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*")) if root.exists() else []
        for p in paths:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@dataclass
class World:
    """What the cases point at: a finished LoRA run with checkpoints, data files, an adapter with a missing base."""

    tmp: Path
    model: str
    run: Path
    pairs: Path
    scored: Path
    math: Path
    mine: Path  # a directory of the user's own files

    def config(self, **train) -> Path:
        cfg = {
            "model": {"name": self.model, "device": "cpu", "dtype": "fp32"},
            "lora": {"r": 4},
            "data": {"train": str(self.pairs), "max_length": 64},
            "train": {"output_dir": str(self.run), "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3,
                      "save_steps": 1, **train},
        }  # fmt: skip
        path = self.tmp / f"cfg-{len(list(self.tmp.glob('cfg-*')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("bad-input")
    pairs = write_jsonl(tmp / "pairs.jsonl", pair_records(8))
    bad_response = {"prompt": "q", "response": 3}  # not text: cannot be scored
    scored = write_jsonl(tmp / "scored.jsonl", [{"prompt": "hi", "response": "hello"}, bad_response])
    math = write_jsonl(tmp / "math.jsonl", [{"prompt": "1+1?", "answer": "2", "completion": "It is 2."}])
    w = World(tmp, tiny_model_dir, tmp / "run", pairs, scored, math, tmp / "mine")
    w.mine.mkdir()
    (w.mine / "thesis.txt").write_text("three years of work")
    code, out = cli("train", "dpo", "--config", w.config())
    assert code == 0, out
    adapter = tmp / "orphan-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp / "gone-base")}))
    return w


def _cases(w: World) -> dict:
    """name -> (argv, expected text in the error, paths that must not change)."""
    run, model, adapter = w.run, w.model, w.tmp / "orphan-adapter"
    existing = w.tmp / "existing.jsonl"
    existing.write_text('{"keep": 1}\n')
    split = w.tmp / "split"
    split.mkdir(exist_ok=True)
    (split / "val.jsonl").write_text('{"keep": 1}\n')
    report_out = w.mine
    return {
        # train
        "train/output_dir_is_a_file": (["train", "dpo", "-c", w.config(), "-s", f"train.output_dir={existing}"],
                                       "is a file, not a directory", [existing]),
        "train/resume_without_checkpoint": (["train", "dpo", "-c", w.config(), "-s",
                                             f"train.output_dir={w.tmp / 'fresh'}", "--resume"], "no checkpoint",
                                            [w.tmp / "fresh"]),
        "train/resume_with_another_lora_rank": (["train", "dpo", "-c", w.config(), "-s", "lora.r=8", "--resume"],
                                                "lora.r: 4 -> 8", [run]),
        "train/resume_with_another_beta": (["train", "dpo", "-c", w.config(), "-s", "method.beta=0.5", "--resume"],
                                           "method.beta: None -> 0.5", [run]),
        "train/over_an_earlier_run": (["train", "dpo", "-c", w.config()], "already holds a run", [run]),
        "train/missing_model_path": (["train", "dpo", "-c", w.config(), "-s", f"model.name={w.tmp / 'no-model'}",
                                      "-s", f"train.output_dir={w.tmp / 'o1'}"], "no such file or directory", []),
        "train/adapter_with_missing_base": (["train", "dpo", "-c", w.config(), "-s", f"model.name={adapter}",
                                             "-s", f"train.output_dir={w.tmp / 'o2'}"],
                                            "base_model_name_or_path in", []),
        "train/model_is_a_data_file": (["train", "dpo", "-c", w.config(), "-s", f"model.name={w.pairs}", "-s",
                                        f"train.output_dir={w.tmp / 'o3'}"], "is a file, not a model directory", []),
        "train/unknown_field": (["train", "dpo", "-c", w.config(), "-s", "train.lr=1"], "unknown field 'train.lr'",
                                [run]),
        # score
        "score/bad_record_no_skip_hint": (["score", run / "model", "-i", w.scored, "-o", w.tmp / "s.jsonl"],
                                          "cannot be scored", []),
        "score/out_exists": (["score", run / "model", "-i", w.pairs, "-o", existing], "already exists", [existing]),
        "score/out_is_the_input": (["score", run / "model", "-i", w.pairs, "-o", w.pairs, "--overwrite"],
                                   "is an input", [w.pairs]),
        "score/missing_reward_model": (["score", w.tmp / "no-rm", "-i", w.pairs, "-o", w.tmp / "s2.jsonl"],
                                       "does not exist", []),
        # generate / best-of-n
        "generate/out_is_a_directory": (["generate", "-m", model, "-p", "hi", "-o", w.mine], "is a directory",
                                        [w.mine]),
        "generate/out_exists": (["generate", "-m", model, "-p", "hi", "-o", existing], "already exists", [existing]),
        "generate/missing_model": (["generate", "-m", w.tmp / "nope", "-p", "hi"], "no such file or directory", []),
        "best-of-n/out_dir_of_the_user": (["best-of-n", "-r", run / "model", "-p", "hi", "-o", w.mine],
                                          "alignkit did not write there", [w.mine]),
        # merge
        "merge/out_holds_the_adapter": (["merge", run / "model", "--out", run, "--overwrite"], "holds", [run]),
        "merge/out_is_a_file": (["merge", run / "model", "--out", existing], "is a file", [existing]),
        "merge/out_is_the_users_dir": (["merge", run / "model", "--out", w.mine], "alignkit did not write there",
                                       [w.mine]),
        "merge/adapter_with_missing_base": (["merge", adapter, "--out", w.tmp / "m1"], "base_model_name_or_path in",
                                            []),
        "merge/not_an_adapter": (["merge", w.mine, "--out", w.tmp / "m2"], "not a LoRA adapter", []),
        # eval
        "eval-math/out_exists": (["eval", "math", "-m", model, "-d", w.math, "-o", existing], "already exists",
                                 [existing]),
        "eval-math/missing_model": (["eval", "math", "-m", w.tmp / "nope", "-d", w.math], "no such file", []),
        "eval-winrate/json_is_an_input": (["eval", "winrate", "--a", w.scored, "--b", w.scored, "--verifier", "math",
                                           "--json", w.scored, "--overwrite"], "is an input", [w.scored]),
        "eval-metrics/out_exists": (["eval", "metrics", "-m", model, "-o", existing], "already exists", [existing]),
        "eval-safety/out_is_a_directory": (["eval", "safety", "-m", model, "-o", w.mine], "is a directory", [w.mine]),
        "eval-rank/out_exists": (["eval", "rank", f"a={w.scored}", f"b={w.scored}", "-r", run / "model", "-o",
                                  existing], "already exists", [existing]),
        "eval-human/key_exists": (["eval", "human", "export", "--a", w.scored, "--b", w.scored, "-o",
                                   w.tmp / "h.csv", "--key", existing], "--key", [existing]),
        # judge
        "judge/missing_pairs": (["judge", "eval", "-j", "verifier:math", "--pairs", w.tmp / "none.jsonl"],
                                "does not exist", []),
        "judge/out_exists": (["judge", "eval", "-j", "verifier:math", "--pairs", w.pairs, "-o", existing],
                             "already exists", [existing]),
        # cai
        "cai-revise/out_exists": (["cai", "revise", "-m", model, "--limit", "1", "-o", existing], "already exists",
                                  [existing]),
        "cai-label/missing_prompts": (["cai", "label", "-m", model, "-p", w.tmp / "none.jsonl", "-o",
                                       w.tmp / "l.jsonl"], "does not exist", []),
        # verify
        "verify/out_is_the_input": (["verify", "math", "-i", w.math, "-o", w.math, "--overwrite"], "is an input",
                                    [w.math]),
        "verify/out_exists": (["verify", "math", "-i", w.math, "-o", existing], "already exists", [existing]),
        # report
        "report/missing_run": (["report", w.tmp / "no-run"], "no such run directory", []),
        "report/out_of_the_user": (["report", run, "--out", report_out], "alignkit did not write there", [w.mine]),
        "report/out_is_the_run": (["report", run, "--out", run, "--overwrite"], "holds", [run]),
        # feedback / serve / retrain / data
        "feedback/out_exists": (["feedback", "export", "-f", "kto", "-o", existing, "--db", w.tmp / "none.sqlite"],
                                "already exists", [existing]),
        "serve/missing_variant_model": (["serve", "--variant", f"new={w.tmp / 'nope'}"], "variant new:", []),
        "retrain/missing_db": (["retrain", "--db", w.tmp / "none.sqlite", "-j", "verifier:math"], "no such store", []),
        "retrain/out_of_the_user": (["retrain", "--db", w.pairs, "-j", "verifier:math", "-o", w.mine],
                                    "alignkit did not write there", [w.mine]),
        "data/split_over_existing": (["data", "split", w.pairs, "-o", split], "already exists", [split]),
        "data/bad_slice": (["train", "dpo", "-c", w.config(), "-s", f"data.train={w.pairs}[a:5]", "-s",
                            f"train.output_dir={w.tmp / 'o4'}"], "slice", []),
        # demo
        "demo/output_dir_of_the_user": (["demo", "--output-dir", w.mine], "alignkit did not write there", [w.mine]),
        "demo/unknown_method": (["demo", "--method", "ppo"], "--method ppo", []),
    }  # fmt: skip


CASES = [
    "train/output_dir_is_a_file", "train/resume_without_checkpoint", "train/resume_with_another_lora_rank",
    "train/resume_with_another_beta", "train/over_an_earlier_run", "train/missing_model_path",
    "train/adapter_with_missing_base", "train/model_is_a_data_file", "train/unknown_field",
    "score/bad_record_no_skip_hint", "score/out_exists", "score/out_is_the_input", "score/missing_reward_model",
    "generate/out_is_a_directory", "generate/out_exists", "generate/missing_model", "best-of-n/out_dir_of_the_user",
    "merge/out_holds_the_adapter", "merge/out_is_a_file", "merge/out_is_the_users_dir",
    "merge/adapter_with_missing_base", "merge/not_an_adapter", "eval-math/out_exists", "eval-math/missing_model",
    "eval-winrate/json_is_an_input", "eval-metrics/out_exists", "eval-safety/out_is_a_directory",
    "eval-rank/out_exists", "eval-human/key_exists", "judge/missing_pairs", "judge/out_exists",
    "cai-revise/out_exists", "cai-label/missing_prompts", "verify/out_is_the_input", "verify/out_exists",
    "report/missing_run", "report/out_of_the_user", "report/out_is_the_run", "feedback/out_exists",
    "serve/missing_variant_model", "retrain/missing_db", "retrain/out_of_the_user", "data/split_over_existing",
    "data/bad_slice", "demo/output_dir_of_the_user", "demo/unknown_method",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error_and_changes_nothing(case, world):
    argv, expected, kept = _cases(world)[case]
    before = snapshot(*kept)
    t0 = time.perf_counter()
    code, out = cli(*argv)
    assert code == 2, out
    message = out[out.index("error: ") :]
    assert expected in message and "Fix:" in message, message
    assert "Traceback" not in out
    assert "on_invalid" not in message or case.startswith("train/"), message  # score has no skip policy
    assert snapshot(*kept) == before, f"{case} changed {kept}"
    assert time.perf_counter() - t0 < 30, "refused only after expensive work"  # a loose bound, not a timing test


def test_the_corpus_covers_every_command_family():
    families = {case.split("/")[0].split("-")[0] for case in CASES}
    assert families >= {"train", "score", "generate", "best", "merge", "eval", "judge", "cai", "verify", "report",
                        "feedback", "serve", "retrain", "data", "demo"}  # fmt: skip


def test_refused_resume_rewrites_nothing_and_lists_every_difference(world):
    saved = (world.run / "config.yaml").read_text()
    code, out = cli("train", "dpo", "-c", world.config(), "-s", "lora.r=8", "-s", "lora.alpha=64", "--resume")
    assert code == 2 and "lora.r: 4 -> 8" in out and "lora.alpha: 32 -> 64" in out, out
    assert (world.run / "config.yaml").read_text() == saved


def test_resume_on_another_device_is_allowed_and_checks_shapes(world, tmp_path):
    """model.device may change on resume; a checkpoint whose tensors have other shapes is refused by name."""
    from alignkit.train.checkpoint import resume_differences

    assert resume_differences({"model": {"device": "cpu"}}, {"model": {"device": "cuda"}}) == []
    assert resume_differences({"method": {"beta": 0.1}}, {"method": {"beta": 0.1}}) == []
    assert resume_differences({"lora": None}, {"lora": {"r": 4}}) == ["lora: None -> not set", "lora.r: not set -> 4"]


def test_merge_refuses_then_replaces_only_what_it_wrote(world, tmp_path):
    out = tmp_path / "merged"
    assert cli("merge", world.run / "model", "--out", out)[0] == 0
    assert (out / "config.json").is_file() and (out / ".alignkit-output").is_file()
    assert cli("merge", world.run / "model", "--out", out)[0] == 0  # its own earlier output: replaced
    assert not list(tmp_path.glob(".merged.*")), "no temp or .old dir left behind"
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    assert cli("merge", world.run / "model", "--out", users)[0] == 2 and (users / "notes.txt").is_file()
    code, _ = cli("merge", world.run / "model", "--out", users, "--overwrite")  # told to: replaced
    assert code == 0 and not (users / "notes.txt").exists() and (users / "config.json").is_file()
    assert (world.run / "model" / "adapter_config.json").is_file()


def test_outputs_overwrite_only_when_told(world, tmp_path):
    out = tmp_path / "verified.jsonl"
    assert cli("verify", "math", "-i", world.math, "-o", out)[0] == 0
    first = out.read_text()
    assert cli("verify", "math", "-i", world.math, "-o", out)[0] == 2
    assert cli("verify", "math", "-i", world.math, "-o", out, "--overwrite")[0] == 0
    assert out.read_text() == first and not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    from alignkit.data.jsonl import write_jsonl as write
    from alignkit.outputs import write_json_atomic

    path = tmp_path / "out.jsonl"
    path.write_text('{"old": 1}\n')

    def records():
        yield {"new": 1}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write(path, records())
    assert path.read_text() == '{"old": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    j = write_json_atomic(tmp_path / "x.json", {"nan": float("nan"), "inf": [float("inf")], "ok": 1.5})
    assert json.loads(j.read_text()) == {"nan": None, "inf": [None], "ok": 1.5}


def test_demo_output_dir_is_checked_before_anything_loads(tmp_path):
    from alignkit.outputs import claim_dir, own_output_dir

    claim_dir(tmp_path / "d", "demo dpo")
    own_output_dir(tmp_path / "d", "demo dpo")  # a re-run of the same demo may replace it
    with pytest.raises(UserError, match="alignkit did not write there"):
        own_output_dir(tmp_path / "d", "demo grpo")


def test_the_real_executable_prints_one_line_and_exits_2(world):
    proc = subprocess.run([sys.executable, "-m", "alignkit", "merge", str(world.run / "model"), "--out",
                           str(world.run), "--overwrite"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert (world.run / "model" / "adapter_config.json").is_file() and (world.run / "config.yaml").is_file()


def test_ctrl_c_says_how_to_continue(world, tmp_path):
    """SIGINT during training: exit 130 and the way on (--resume from the checkpoint it kept)."""
    cfg = world.config(output_dir=str(tmp_path / "run"), max_steps=100_000, save_steps=1)  # never ends by itself
    # SIGINT as a terminal delivers it, even when pytest itself runs in the background (`make test &`): a child
    # that inherits SIG_IGN gets no KeyboardInterrupt from Python and would train on
    proc = subprocess.Popen([sys.executable, "-m", "alignkit", "train", "dpo", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while not list((tmp_path / "run").glob("ckpt-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be interrupted"  # 400 steps took 8 s on one CPU
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # no-op once it exited; never left training in the background
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "--resume" in err and "Traceback" not in err, err
    assert os.path.isdir(tmp_path / "run")
