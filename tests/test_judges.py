"""The judge interface: combining both orders (swap rule), pointwise judges (reward model, verifier), judge quality
against human labels, and `alignkit judge eval`."""

from __future__ import annotations

import json
import math

import pytest
from conftest import pair_records
from helpers import write_jsonl
from typer.testing import CliRunner

from alignkit.cli.main import app
from alignkit.data import to_pairwise
from alignkit.errors import ConfigError
from alignkit.judges import Judge, Verdict, VerifierJudge, combine_orders, consistency, judge_pairs, load_judge
from alignkit.judges.quality import judge_agreement


class FirstShown(Judge):
    """A judge with pure position bias: the response shown first always wins (a rule, not a model)."""

    name = "first-shown"

    def compare(self, prompts, a, b, principles=None, columns=None):
        return [Verdict(1.0, 0.9) for _ in prompts]


class Longer(Judge):
    """A rule-based judge without position bias: the longer response wins; equal lengths tie."""

    name = "longer"

    def compare(self, prompts, a, b, principles=None, columns=None):
        return [Verdict(1.0 if len(x) > len(y) else 0.0 if len(y) > len(x) else 0.5) for x, y in zip(a, b)]


def test_combine_orders_is_the_swap_rule():
    assert combine_orders(Verdict(1.0, 0.8), Verdict(1.0, 0.6)).outcome == 1.0
    both = combine_orders(Verdict(1.0, 0.8), Verdict(1.0, 0.6))
    assert both.p_a == pytest.approx(0.7) and both.detail["consistent"] is True
    assert combine_orders(Verdict(1.0), Verdict(0.0)).outcome == 0.5  # disagreement -> tie
    assert combine_orders(Verdict(1.0), Verdict(0.0), "drop").outcome is None
    unjudged = combine_orders(Verdict(None), Verdict(1.0))
    assert unjudged.outcome is None and unjudged.detail["consistent"] is None  # unjudged is never a preference
    assert Verdict(1.0, 0.8).swapped().outcome == 0.0 and Verdict(1.0, 0.8).swapped().p_a == pytest.approx(0.2)


def test_both_orders_neutralize_position_bias():
    prompts, a, b = ["p"] * 4, ["short", "a longer one", "x", "same"], ["a longer one", "short", "yy", "same"]
    biased = judge_pairs(FirstShown(), prompts, a, b)
    assert [v.outcome for v in biased] == [0.5] * 4 and consistency(biased)["self_consistency"] == 0.0
    assert [v.p_a for v in biased] == [pytest.approx(0.5)] * 4  # 0.9 one way, 0.1 the other
    assert [v.outcome for v in judge_pairs(FirstShown(), prompts, a, b, inconsistent="drop")] == [None] * 4
    fair = judge_pairs(Longer(), prompts, a, b)
    assert [v.outcome for v in fair] == [0.0, 1.0, 0.0, 0.5] and consistency(fair)["self_consistency"] == 1.0
    assert [v.outcome for v in judge_pairs(FirstShown(), prompts, a, b, both_orders=False)] == [1.0] * 4
    with pytest.raises(ConfigError, match="inconsistent"):
        judge_pairs(Longer(), prompts, a, b, inconsistent="coin")


def test_agreement_with_humans_exposes_a_position_biased_judge():
    examples = [to_pairwise(r, f"x:{i}") for i, r in enumerate(pair_records(40))]
    both = judge_agreement(FirstShown(), examples, both_orders=True)
    assert both["ties"] == 40 and math.isnan(both["agreement"]) and both["self_consistency"] == 0.0
    assert both["first_position_rate"] == 1.0
    one = judge_agreement(FirstShown(), examples, both_orders=False, seed=1)
    assert one["first_position_rate"] == 1.0 and 0.3 < one["agreement"] < 0.7  # randomized order: chance level
    longer = judge_agreement(Longer(), examples)  # "It is 7." is shorter than "I will not answer that."
    assert longer["agreement"] == 0.0 and longer["agreement_interval"][1] < 0.1


def test_reward_model_judge_is_order_invariant_with_bradley_terry_confidence(reward_model_dir):
    judge = load_judge(f"reward_model:{reward_model_dir}", device="cpu")
    assert judge.order_invariant and judge.name.startswith("reward_model:")
    prompts, a, b = ["What is 1 plus 2?"] * 2, ["It is 3.", "I will not answer that."], ["I will not answer that."] * 2
    verdicts = judge_pairs(judge, prompts, a, b)
    ra, rb = verdicts[0].detail["score_a"], verdicts[0].detail["score_b"]
    assert verdicts[0].p_a == pytest.approx(1 / (1 + math.exp(rb - ra)))
    assert verdicts[1].outcome == 0.5  # the same response on both sides
    scores = judge.score(prompts, a)
    assert scores[0] == pytest.approx(ra) and judge.label(prompts, a, threshold=scores[0]) == [
        False,
        scores[1] > scores[0],
    ]


def test_verifier_judge_takes_gold_answers_as_columns():
    judge = VerifierJudge("math", workers=0)
    verdicts = judge_pairs(judge, ["1+1?", "2+2?", "poem"], ["Answer: 2", "Answer: 5", "a"], ["Answer: 3", "4", "b"],
                           columns={"answer": ["2", "4", None]})  # fmt: skip
    assert [v.outcome for v in verdicts] == [1.0, 0.0, None]  # no gold answer: unjudged
    assert judge.score(["1+1?"], ["2"], columns={"answer": ["2"]}) == [1.0]


def test_judge_specs_are_checked():
    for bad, match in (("nope", "not a judge"), ("llm:", "not a judge"), ({"kind": "oracle"}, "kind"),
                       ({"kind": "reward_model"}, "judge.path"), (3, "kind")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            load_judge(bad)
    with pytest.raises(ConfigError, match="judge: .*unexpected keyword"):
        load_judge({"kind": "verifier", "function": "math", "colour": "red"})


def test_judge_eval_cli(reward_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_records(12) + [{"prompt": "no pair here"}])
    out = tmp_path / "judge.json"
    result = CliRunner().invoke(app, ["judge", "eval", "--judge", f"reward_model:{reward_model_dir}", "--pairs",
                                      str(pairs), "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "skipped 1 invalid records" in result.output and "agreement with the human label" in result.output
    report = json.loads(out.read_text())
    assert report["kind"] == "judge_eval" and report["pairs"] == 12 and len(report["rows"]) == 12
    assert "self_consistency" not in report  # a reward model cannot disagree with itself across orders
    spec = tmp_path / "judge.yaml"
    spec.write_text(f"kind: reward_model\npath: {reward_model_dir}\nmargin: 100\n")
    result = CliRunner().invoke(app, ["judge", "eval", "--judge", str(spec), "--pairs", str(pairs), "--device", "cpu"])
    assert result.exit_code == 0 and "ties 12" in result.output  # margin 100: every comparison is a tie
