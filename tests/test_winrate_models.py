"""Win rates with policies given as models (tiny random Llamas judged by a tiny trained reward model), and
several policies ranked by Bradley-Terry ratings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tiny_llama, write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.errors import UserError
from alignkit.eval.ranking import comparisons, match_many, pairwise_rates, parse_specs, rank, ranking_json

PROMPTS = [f"Question {i}: say something about topic {i}." for i in range(6)]


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, embedded_tokenizer) -> str:
    """Another tiny Llama (a different initialization) with the same tokenizer: a second policy."""
    path = tmp_path_factory.mktemp("tiny-llama-2")
    tiny_llama(vocab_size=len(embedded_tokenizer), seed=7, bos_token_id=1, eos_token_id=2, pad_token_id=2,
               max_position_embeddings=512, initializer_range=0.2).save_pretrained(path)  # fmt: skip
    embedded_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    records = [{"prompt": p, "category": "even" if i % 2 == 0 else "odd"} for i, p in enumerate(PROMPTS)]
    return str(write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", records))


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def winrate(reward_model_dir, *args):
    return ok("eval", "winrate", "--reward-model", reward_model_dir, "--device", "cpu", "--max-new-tokens", 8, *args)


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_model_vs_model_saves_responses_that_read_back_to_the_same_result(
    tiny_model_dir, other_model_dir, reward_model_dir, prompts_file, tmp_path
):
    saved, out, report = tmp_path / "responses", tmp_path / "judged.jsonl", tmp_path / "eval" / "winrate.json"
    text = winrate(reward_model_dir, "--a-model", tiny_model_dir, "--b-model", other_model_dir, "--prompts",
                   prompts_file, "--limit", 5, "--save-responses", saved, "--out", out, "--json", report)  # fmt: skip
    assert "on 5 prompts" in text and "95% Wilson interval" in text
    a_saved, b_saved = read_jsonl(saved / "a.jsonl"), read_jsonl(saved / "b.jsonl")
    assert [r["prompt"] for r in a_saved] == PROMPTS[:5] == [r["prompt"] for r in b_saved]
    assert [r["category"] for r in a_saved] == ["even", "odd", "even", "odd", "even"]
    rows = read_jsonl(out)
    assert [r["response_a"] for r in rows] == [r["response"] for r in a_saved]
    assert [r["response_b"] for r in rows] == [r["response"] for r in b_saved]
    assert any(r["response_a"] != r["response_b"] for r in rows)  # two different policies
    record = json.loads(report.read_text())
    assert record["kind"] == "winrate" and record["a"] == tiny_model_dir and record["judge"] == reward_model_dir
    assert record["wins"] + record["ties"] + record["losses"] == 5 and set(record["per_category"]) == {"even", "odd"}

    from_files = tmp_path / "from_files.jsonl"
    winrate(reward_model_dir, "--a", saved / "a.jsonl", "--b", saved / "b.jsonl", "--out", from_files)
    again = read_jsonl(from_files)
    keys = ("prompt", "response_a", "response_b", "outcome", "length_diff")
    assert [{k: r[k] for k in keys} for r in again] == [{k: r[k] for k in keys} for r in rows]
    assert np.allclose([r["reward_a"] for r in again], [r["reward_a"] for r in rows], atol=1e-5)

    # a file for A, a model for B: B answers A's prompts (greedy, so the same responses as before)
    mixed = tmp_path / "mixed.jsonl"
    winrate(reward_model_dir, "--a", saved / "a.jsonl", "--b-model", other_model_dir, "--out", mixed)
    assert [r["response_b"] for r in read_jsonl(mixed)] == [r["response"] for r in b_saved]
    # and the other way round: the model answers the file's prompts
    again = ["--b", saved / "b.jsonl", "--out", mixed, "--limit", 3, "--overwrite"]
    winrate(reward_model_dir, "--a-model", tiny_model_dir, *again)
    assert [r["response_a"] for r in read_jsonl(mixed)] == [r["response"] for r in a_saved[:3]]


def test_a_model_against_itself_greedy_ties_everywhere(tiny_model_dir, reward_model_dir, prompts_file, tmp_path):
    report = tmp_path / "self.json"
    text = winrate(reward_model_dir, "--a-model", tiny_model_dir, "--b-model", tiny_model_dir, "--prompts",
                   prompts_file, "--json", report)  # fmt: skip
    assert "on 6 prompts: 0 wins, 6 ties, 0 losses" in text
    assert json.loads(report.read_text())["rate"] == 0.5


def test_winrate_errors_name_the_fix(tiny_model_dir, reward_model_dir, prompts_file, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": p, "response": "x"} for p in PROMPTS])
    base = ["eval", "winrate", "--reward-model", reward_model_dir, "--device", "cpu"]
    cases = [
        (["--a", a, "--a-model", tiny_model_dir, "--b", a], "--a and --a-model: both given"),
        (["--b", a], "--a and --a-model: neither given"),
        (["--a", a], "--b and --b-model: neither given"),
        (["--a", a, "--b-model", tiny_model_dir, "--prompts", prompts_file], "--prompts is for two models"),
        (["--a", a, "--b", a, "--save-responses", tmp_path / "s"], "--save-responses: no policy is a model"),
        (["--a-model", tiny_model_dir, "--b", a, "--save-responses", tmp_path], "is an input of this command"),
        (["--a-model", tiny_model_dir, "--b-model", tiny_model_dir, "--margin", "-1"], "margin is -1"),
    ]
    for args, message in cases:
        result = invoke(*base, *args)
        assert isinstance(result.exception, UserError) and message in str(result.exception), (args, result.output)


# ---- ranking ----


def ordered_rewards(n: int = 60, seed: int = 0) -> np.ndarray:
    """Rewards ``(n, 3)`` of models of quality good > mid > bad, noisy enough that every pair splits."""
    rng = np.random.default_rng(seed)
    return np.array([1.0, 0.5, 0.0]) + rng.normal(0, 0.6, size=(n, 3))


def test_ratings_follow_quality_and_pairwise_rates_match_direct_counts():
    names = ["mid", "bad", "good"]
    r = ordered_rewards()[:, [1, 2, 0]]  # columns in the order of names
    ranking = rank(r, names, n_boot=50)
    assert ranking.order() == ["good", "mid", "bad"]
    assert ranking.ratings["good"][0] > ranking.ratings["mid"][0] > ranking.ratings["bad"][0]
    for m, (rating, low, high) in ranking.ratings.items():
        assert low <= rating <= high, m
    for i, a in enumerate(names):
        assert ranking.mean_reward[a] == pytest.approx(r[:, i].mean())
        for j, b in enumerate(names):
            if i != j:
                assert ranking.pairwise[a][b] == pytest.approx(float(np.mean(r[:, i] > r[:, j])))
                assert ranking.pairwise[a][b] + ranking.pairwise[b][a] == pytest.approx(1.0)
    assert len(comparisons(r, names)) == 60 * 3
    record = ranking_json(ranking)
    assert record["kind"] == "ranking" and record["prompts"] == 60 and list(record["ratings"]) == ["good", "mid", "bad"]
    assert set(record["ratings"]["good"]) == {"rating", "low", "high", "mean_reward"}


def test_margin_makes_ties():
    r = np.array([[1.0, 0.9, 0.0], [0.0, 0.05, 1.0]])
    comps = comparisons(r, ["x", "y", "z"], margin=0.2)
    assert comps == [("x", "y", 0.5), ("x", "z", 1.0), ("y", "z", 1.0),
                     ("x", "y", 0.5), ("x", "z", 0.0), ("y", "z", 0.0)]  # fmt: skip
    assert pairwise_rates(comps, ["x", "y", "z"])["x"] == {"y": 0.5, "z": 0.5}
    all_ties = rank(r, ["x", "y", "z"], margin=10.0, n_boot=10)
    assert all(v == 0.5 for row in all_ties.pairwise.values() for v in row.values())
    assert all(rating == pytest.approx(1000.0) for rating, _, _ in all_ties.ratings.values())
    with pytest.raises(UserError, match="margin is -1"):
        comparisons(r, ["x", "y", "z"], margin=-1)


def test_no_ratings_when_one_model_always_wins_but_the_rest_is_reported():
    r = np.array([[2.0, 0.0], [3.0, 1.0], [4.0, 0.5]])
    ranking = rank(r, ["best", "worst"], n_boot=10)
    assert ranking.ratings is None and "do not exist" in ranking.note
    assert ranking.order() == ["best", "worst"] and ranking.pairwise["best"]["worst"] == 1.0
    assert ranking_json(ranking)["ratings"]["best"]["rating"] is None


def test_specs_and_prompt_sets_are_checked(tmp_path):
    assert parse_specs(["a=x.jsonl", "b = y.jsonl"]) == [("a", "x.jsonl"), ("b", "y.jsonl")]
    for bad, message in [(["a.jsonl", "b=y"], "'a.jsonl' is not NAME=FILE"), (["=x", "b=y"], "is not NAME=FILE"),
                         (["a=x", "a=y"], "given twice"), (["a=x"], "1 policy given")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse_specs(bad)

    def records(file, prompts):
        return [(f"{file}:{i + 1}", {"prompt": p, "response": f"r{i}"}) for i, p in enumerate(prompts)]

    first = ("a", "a.jsonl", records("a.jsonl", PROMPTS))
    matched = match_many([first, ("b", "b.jsonl", records("b.jsonl", PROMPTS[::-1]))])
    assert matched.prompts == PROMPTS and matched.responses[0] == ["r0", "r5"]
    with pytest.raises(UserError, match=r'b.jsonl \(b\): no response to prompt "Question 5'):
        match_many([first, ("b", "b.jsonl", records("b.jsonl", PROMPTS[:5]))])
    with pytest.raises(UserError, match=r"b.jsonl:7 \(b\): prompt \"extra\" is not in a.jsonl"):
        match_many([first, ("b", "b.jsonl", records("b.jsonl", [*PROMPTS, "extra"]))])


def test_rank_cli_end_to_end_with_three_files(reward_model_dir, tmp_path):
    from alignkit.reward_model import RewardModel

    texts = {
        "long": [f"A careful, detailed answer number {i}, with reasons and an example." for i in range(6)],
        "mid": [f"An answer {i}." for i in range(6)],
        "short": [f"n{i}" for i in range(6)],
    }
    files = {n: write_jsonl(tmp_path / f"{n}.jsonl", [{"prompt": p, "response": t} for p, t in zip(PROMPTS, ts)])
             for n, ts in texts.items()}  # fmt: skip
    out = tmp_path / "eval" / "ranking.json"
    text = ok("eval", "rank", *(f"{n}={f}" for n, f in files.items()), "--reward-model", reward_model_dir,
              "--device", "cpu", "--out", out, "--bootstrap", 20)  # fmt: skip
    assert "3 models on 6 prompts" in text and "vs long" in text and "mean reward" in text
    record = json.loads(out.read_text())
    assert record["kind"] == "ranking" and record["prompts"] == 6 and set(record["ratings"]) == set(texts)
    rm = RewardModel.load(reward_model_dir, device="cpu")
    direct = {n: rm.reward(PROMPTS, ts)[0].numpy() for n, ts in texts.items()}
    for a in texts:
        assert record["ratings"][a]["mean_reward"] == pytest.approx(float(direct[a].mean()), abs=1e-5)
        for b in texts:
            if a != b:
                d = direct[a] - direct[b]
                expected = float(np.mean(np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))))
                assert record["pairwise"][a][b] == pytest.approx(expected)

    missing = write_jsonl(tmp_path / "missing.jsonl", [{"prompt": p, "response": "x"} for p in PROMPTS[:4]])
    result = invoke("eval", "rank", f"long={files['long']}", f"m={missing}", "--reward-model", reward_model_dir)
    assert isinstance(result.exception, UserError)
    assert f"{missing} (m): no response to prompt" in str(result.exception) and "Question 4" in str(result.exception)
    result = invoke("eval", "rank", f"long={files['long']}", str(missing), "--reward-model", reward_model_dir)
    assert isinstance(result.exception, UserError) and "is not NAME=FILE" in str(result.exception)
