"""Constitutional AI: the constitution and its validation, seeded principle choice, the red-team set,
``alignkit cai revise`` (critique -> revision -> SFT data) and ``alignkit cai label`` (RLAIF preference pairs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import write_jsonl
from typer.testing import CliRunner

from alignkit.cai import derive_seed, load_constitution
from alignkit.cai.label import pick_pairs
from alignkit.cai.revise import FEW_SHOT, check_revision, clean
from alignkit.cli.main import app
from alignkit.data import read_records, to_pairwise, to_sft, validate_records
from alignkit.data.readers import builtin_path
from alignkit.errors import ConfigError, UserError
from alignkit.judges import Judge, Verdict

GOOD = {"name": "p", "critique": "Critique it.", "revision": "Revise it.", "comparison": "Which is better?"}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ constitution


def test_shipped_constitution_has_16_complete_principles():
    c = load_constitution()
    assert len(c) >= 16 and len(set(c.names)) == len(c)
    for p in c:
        assert all(getattr(p, f).strip() for f in ("name", "critique", "revision", "comparison")), p
        assert p.comparison.rstrip().endswith("?"), p.name
    for name in ("privacy", "no_illegal_activity", "acknowledges_uncertainty", "intellectual_humility"):
        assert name in c.names
    assert c["privacy"].name == "privacy" and c.select(["accurate", "privacy"]).names == ["accurate", "privacy"]


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"principles": [{**GOOD, "critique": "  "}]}, "principles[0] ('p'): field 'critique' is empty"),
        ({"principles": [GOOD, {k: v for k, v in GOOD.items() if k != "revision"} | {"name": "q"}]},
         "principles[1] ('q'): field 'revision' is missing"),
        ({"principles": [GOOD, GOOD]}, "principles[1] ('p'): field 'name' repeats principles[0]"),
        ({"principles": [{**GOOD, "weight": 2}]}, "principles[0] ('p'): unknown field 'weight'"),
        ({"principles": [{**GOOD, "comparison": 3}]}, "principles[0] ('p'): field 'comparison' is empty or not text"),
        ({"principles": [{**GOOD, "name": None}]}, "principles[0]: field 'name' is missing"),
        ({"principles": {"p": GOOD}}, "'principles' must be a list"),
        ({"principles": []}, "zero principles"),
        ({"principles": ["be nice"]}, "principles[0] is a str, not a mapping"),
        ({"principles": [GOOD], "rules": []}, "unknown top-level key 'rules'"),
    ],
)  # fmt: skip
def test_constitution_errors_name_file_principle_and_field(tmp_path, data, expected):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_constitution(path)
    assert str(path) in str(e.value) and expected in str(e.value) and "Fix:" in str(e.value)


def test_constitution_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_constitution(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles: [name: {")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_constitution(bad)
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump([GOOD, {**GOOD, "name": "q"}]))  # a bare list works too
    assert load_constitution(bare).names == ["p", "q"]


def test_principle_choice_is_seeded_and_independent_of_batching():
    c = load_constitution()
    whole = c.sample(40, seed=3)
    assert whole == c.sample(40, seed=3) == [p for s in range(0, 40, 7) for p in c.sample(min(7, 40 - s), 3, s)]
    assert c.sample(40, seed=3, start=10)[:5] == whole[10:15]
    assert whole != c.sample(40, seed=4) and len({p.name for p in whole}) > 5  # seeded, and spread out
    rounds = [c.pick(3, 0, r).name for r in range(len(c))]
    assert sorted(rounds) == sorted(c.names)  # within one item, rounds never repeat a principle
    assert derive_seed(0, "critique", 1, 5) == derive_seed(0, "critique", 1, 5) != derive_seed(0, "critique", 1, 6)


# ------------------------------------------------------------------------------------------------ red-team set


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_red_team_set_is_large_varied_and_apart_from_the_safety_eval_set():
    red = [r for _, r in read_records(str(builtin_path("red_team_prompts.jsonl")))]
    safety = [r["prompt"] for _, r in read_records(str(builtin_path("safety_prompts.jsonl")))]
    assert len(red) >= 100 and all(set(r) == {"prompt", "category"} and r["prompt"].strip() for r in red)
    assert len({r["category"] for r in red}) >= 8
    prompts = [r["prompt"] for r in red]
    assert len(set(prompts)) == len(prompts)
    normalized = {" ".join(sorted(_words(p))) for p in safety}
    assert not {" ".join(sorted(_words(p))) for p in prompts} & normalized  # no prompt of the eval set
    for p in prompts:  # nor a near-paraphrase of one (word-set Jaccard)
        worst = max(len(_words(p) & _words(s)) / len(_words(p) | _words(s)) for s in safety)
        assert worst < 0.5, p


# ------------------------------------------------------------------------------------------------ revise


def test_revision_filters_on_constructed_cases():
    before = "Here is how you could do it: first, get the tools."
    assert check_revision("", before) == "empty" and check_revision("  \n", before) == "empty"
    assert check_revision("here is how you could  do it: FIRST, get the tools.", before) == "unchanged"
    loop = "I cannot help with that. " * 4
    assert check_revision(loop, before) == "looping"
    copied = FEW_SHOT[0][5]
    assert check_revision(copied, before) == "copied_example"
    assert check_revision(copied, before, few_shot=False) is None  # no example shown: nothing could be copied
    assert check_revision("I can't help with that, but a locksmith can let you into your own home.", before) is None
    assert (
        clean("  Revised reply: **Sure.** ") == "**Sure.**" and clean("Reply to him kindly.") == "Reply to him kindly."
    )


def test_cai_revise_end_to_end_writes_sft_data_and_chains(tiny_model_dir, tmp_path):
    out = tmp_path / "rev.jsonl"
    res = invoke("cai", "revise", "-m", tiny_model_dir, "--limit", 6, "--rounds", 2, "--max-new-tokens", 6,
                 "--critique-tokens", 4, "--temperature", 1.0, "--seed", 1, "-o", out, "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    chains, summary = lines(tmp_path / "rev.chains.jsonl"), json.loads((tmp_path / "rev.summary.json").read_text())
    assert len(chains) == summary["total"] == 6
    assert summary["kept"] + sum(summary["filtered"].values()) == summary["total"]
    assert len({c["category"] for c in chains}) == 6  # --limit spreads over categories
    for c in chains:  # every verdict follows from the texts it was made on
        previous = c["initial"]
        for r in c["rounds"]:
            assert r["principle"] in load_constitution().names and r["critique"] is not None
            assert r["filtered"] == check_revision(r["revision"], previous)
            previous = r["revision"]
        assert c["filtered"] == c["rounds"][-1]["filtered"]
        assert len(c["rounds"]) == 2 or c["filtered"] is not None  # a filtered chain stops at its bad round
    kept = [c for c in chains if c["filtered"] is None]
    assert summary["kept"] == len(kept) > 0
    examples, problems = validate_records(read_records(str(out)), to_sft)
    assert not problems and len(examples) == len(kept)
    assert [x.completion[0]["content"] for x in examples] == [c["final"] for c in kept]
    assert examples[0].prompt == ({"role": "user", "content": kept[0]["prompt"]},)  # as the model was prompted
    assert f"kept {len(kept)}" in res.output

    # the same seed picks the same principles for the same prompts, whatever the run's size
    small = tmp_path / "small.jsonl"
    res = invoke("cai", "revise", "-m", tiny_model_dir, "--limit", 3, "--max-new-tokens", 2, "--critique-tokens", 2,
                 "--temperature", 1.0, "--seed", 1, "-o", small, "--device", "cpu", "--drop-truncated")  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    small_chains = lines(tmp_path / "small.chains.jsonl")
    assert [c["rounds"][0]["principle"] for c in small_chains] == [c["rounds"][0]["principle"] for c in chains[:3]]
    assert json.loads((tmp_path / "small.summary.json").read_text())["filtered"]["truncated"] == 3  # 2 tokens: cut


def test_cai_revise_sft_output_trains(tiny_model_dir, tmp_path):
    """The SFT file goes into alignkit train sft unchanged."""
    from alignkit.train import make_config, run

    out = tmp_path / "rev.jsonl"
    res = invoke("cai", "revise", "-m", tiny_model_dir, "--limit", 4, "--max-new-tokens", 6, "--critique-tokens", 2,
                 "--temperature", 1.0, "--no-few-shot", "-o", out, "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    cfg = make_config("sft", model={"name": tiny_model_dir, "dtype": "fp32", "device": "cpu"},
                      data={"train": str(out), "max_length": 64},
                      train={"output_dir": str(tmp_path / "sft"), "max_steps": 1, "batch_size": 2})  # fmt: skip
    assert Path(run("sft", cfg, log=lambda *a, **k: None).model_dir).is_dir()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--rounds", "0"], "field 'rounds' is 0"),
        (["--prompts", "MISSING"], "does not exist"),
        (["--prompts", "NOPROMPT"], "bad.jsonl:2: field 'prompt' is missing"),
        (["--prompts", "NOPROMPT", "-o", "NOPROMPT"], "is an input of this command; refusing to overwrite it"),
        (["--chains", "OUT"], "is given for two outputs"),
        (["--constitution", "MISSING"], "cannot be read"),
        (["--principle", "kindness"], "no principle named 'kindness'"),
        (["--set", "roundz=2"], "unknown field 'roundz'"),
        (["--no-overwrite"], "already exists"),
    ],
)
def test_cai_revise_bad_input_is_one_clear_error(tmp_path, args, expected):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hi"}, {"question": "Where?"}])
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")
    subs = {"MISSING": str(tmp_path / "nope.jsonl"), "NOPROMPT": str(bad), "OUT": str(out)}
    flags = [] if args == ["--no-overwrite"] else [subs.get(a, a) for a in args] + ["--overwrite"]
    res = invoke("cai", "revise", "-m", str(tmp_path / "no-model"), "-o", out, *flags)
    assert isinstance(res.exception, UserError), res.output
    assert expected in str(res.exception) and "Fix:" in str(res.exception)
    assert out.read_text() == "earlier results\n" and bad.read_text().count("\n") == 2  # nothing lost


# ------------------------------------------------------------------------------------------------ label


def test_pick_pairs_best_worst_and_all():
    v = {(0, 1): Verdict(1.0), (0, 2): Verdict(1.0), (1, 2): Verdict(0.5)}
    assert pick_pairs(3, v, "best_worst") == ([(0, 2, (0, 2))], {})  # wins 2, 0.5, 0.5: the last of the worst
    pairs, skipped = pick_pairs(3, v, "all")
    assert sorted(p[:2] for p in pairs) == [(0, 1), (0, 2)] and skipped == {"tie": 1}
    cycle = {(0, 1): Verdict(1.0), (1, 2): Verdict(1.0), (0, 2): Verdict(0.0)}  # 0 > 1 > 2 > 0: all tied on wins
    assert pick_pairs(3, cycle, "best_worst") == ([], {"intransitive": 1})
    assert pick_pairs(2, {(0, 1): Verdict(None)}, "best_worst") == ([], {"unjudged": 1})
    assert pick_pairs(2, {(0, 1): Verdict(0.0, 0.2)}, "best_worst") == ([(1, 0, (0, 1))], {})


def _check_pairs(out: Path, summary_path: Path, n_prompts: int) -> tuple[list[dict], dict]:
    pairs, summary = lines(out), json.loads(summary_path.read_text())
    examples, problems = validate_records(read_records(str(out)), to_pairwise)
    assert not problems and len(examples) == len(pairs) == summary["pairs"]
    assert summary["total_prompts"] == n_prompts
    for p in pairs:
        assert set(p) >= {"prompt", "chosen", "rejected", "principle", "judge", "confidence", "verdict_first",
                          "verdict_second"} and p["principle"] in load_constitution().names  # fmt: skip
    return pairs, summary


def test_cai_label_with_a_reward_model_judge(tiny_model_dir, reward_model_dir, tmp_path):
    from alignkit.reward_model import RewardModel

    out = tmp_path / "prefs.jsonl"
    res = invoke("cai", "label", "-m", tiny_model_dir, "--judge", f"reward_model:{reward_model_dir}", "--limit", 5,
                 "-k", 3, "--max-new-tokens", 5, "-o", out, "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    pairs, summary = _check_pairs(out, tmp_path / "prefs.summary.json", 5)
    assert summary["pairs"] + sum(summary["skipped"].values()) == 5  # best_worst: one outcome per prompt
    assert summary["comparisons"] == 15 and pairs  # 3 responses: 3 pairs per prompt
    rm = RewardModel.load(reward_model_dir)
    prompts = [p["prompt"][0]["content"] for p in pairs]
    chosen = rm.reward(prompts, [p["chosen"][0]["content"] for p in pairs])[0]
    rejected = rm.reward(prompts, [p["rejected"][0]["content"] for p in pairs])[0]
    assert (chosen > rejected).all()  # the judge's preference, as its reward model sees it
    assert all(p["confidence"] > 0.5 and p["verdict_first"] == 1.0 and p["verdict_second"] is None for p in pairs)
    assert "self-consistency across orders n/a" in res.output


def test_cai_label_with_the_math_verifier_passes_the_records_answers(tiny_model_dir, tmp_path):
    records = [r for _, r in read_records(str(builtin_path("arithmetic_train.jsonl")))][:4]
    prompts = write_jsonl(tmp_path / "arith.jsonl", records + [{"prompt": "Write a haiku.", "category": "other"}])
    out = tmp_path / "prefs.jsonl"
    res = invoke("cai", "label", "-m", tiny_model_dir, "--judge", "verifier:math", "--prompts", prompts,
                 "--max-new-tokens", 4, "-o", out, "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    _, summary = _check_pairs(out, tmp_path / "prefs.summary.json", 5)
    skipped = summary["skipped"]
    assert skipped["unjudged"] == 1  # only the haiku has no gold answer: the others reached the verifier
    assert summary["pairs"] + skipped["tie"] + skipped["too_few_responses"] == 4


def test_cai_label_with_a_verifier_function_writes_pairs(tiny_model_dir, tmp_path):
    """A pointwise reward that always separates the responses (length): every prompt gives a pair, longer chosen."""
    fn = Path(__file__).parent / "reward_fns.py"
    out = tmp_path / "prefs.jsonl"
    res = invoke("cai", "label", "-m", tiny_model_dir, "--judge", f"verifier:{fn}:length", "--limit", 4,
                 "--pairing", "all", "-k", 3, "--max-new-tokens", 6, "-o", out, "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    pairs, summary = _check_pairs(out, tmp_path / "prefs.summary.json", 4)
    assert summary["pairs"] + summary["skipped"]["tie"] == summary["comparisons"] >= 4
    assert all(len(p["chosen"][0]["content"]) > len(p["rejected"][0]["content"]) for p in pairs)


class FirstShown(Judge):
    """A judge that prefers whichever response it is shown first, and says so with p = 0.9: pure position bias."""

    name = "first_shown"

    def compare(self, prompts, a, b, principles=None, columns=None):
        assert principles is not None and all(p.comparison for p in principles)
        return [Verdict(1.0, 0.9) for _ in prompts]


class Longer(Judge):
    name = "longer"

    def compare(self, prompts, a, b, principles=None, columns=None):
        outcomes = [1.0 if len(x) > len(y) else 0.0 if len(y) > len(x) else 0.5 for x, y in zip(a, b)]
        return [Verdict(o, {1.0: 0.8, 0.0: 0.2, 0.5: 0.5}[o]) for o in outcomes]


def test_label_asks_both_orders_and_skips_position_bias(tiny_model_dir, tmp_path):
    from alignkit.cai.label import LabelConfig, run_label

    def cfg(name):
        return LabelConfig(policy=tiny_model_dir, limit=4, max_new_tokens=6, device="cpu", out=str(tmp_path / name))

    biased = run_label(cfg("biased.jsonl"), log=lambda *a: None, judge=FirstShown())
    skipped = biased["skipped"]
    assert biased["pairs"] == 0 and skipped["tie"] == 4 - skipped["too_few_responses"] >= 3  # orders always disagree
    assert biased["judge_consistency"]["self_consistency"] == 0.0
    fair = run_label(cfg("fair.jsonl"), log=lambda *a: None, judge=Longer())
    assert fair["judge_consistency"]["self_consistency"] == 1.0 and fair["pairs"] >= 1
    for p in lines(tmp_path / "fair.jsonl"):
        assert len(p["chosen"][0]["content"]) > len(p["rejected"][0]["content"]) and p["judge"] == "longer"
        assert p["verdict_first"] == p["verdict_second"] == 1.0 and abs(p["confidence"] - 0.8) < 1e-9


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-k", "1"], "field 'samples' is 1"),
        (["--temperature", "0"], "field 'temperature' is 0.0"),
        (["--pairing", "best"], "field 'pairing' is 'best'"),
        (["--judge", "oracle"], "is not a judge"),
        (["--prompts", "NOPROMPT"], "field 'prompt' is missing"),
        (["--prompts", "NOPROMPT", "-o", "NOPROMPT"], "is an input of this command"),
    ],
)
def test_cai_label_bad_input_is_one_clear_error(tmp_path, args, expected):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Where?"}])
    res = invoke("cai", "label", "-m", str(tmp_path / "no-model"), "-o", tmp_path / "o.jsonl",
                 *[str(bad) if a == "NOPROMPT" else a for a in args])  # fmt: skip
    assert isinstance(res.exception, UserError), res.output
    assert expected in str(res.exception) and "Fix:" in str(res.exception)
    assert not (tmp_path / "o.jsonl").exists()


def test_shipped_cai_configs_load():
    from alignkit.cai.label import LabelConfig
    from alignkit.cai.revise import ReviseConfig
    from alignkit.config import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    revise = load_config(ReviseConfig, str(configs / "cai_revise.yaml"), ["rounds=3"])
    assert revise.rounds == 3 and revise.out.startswith("runs/") and revise.chains_file.endswith(".chains.jsonl")
    label = load_config(LabelConfig, str(configs / "cai_label.yaml"))
    assert label.samples >= 2 and label.out.startswith("runs/")
