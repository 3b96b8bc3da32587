"""Alignment metrics on samples: KL estimators against an exact KL, text statistics, length bias."""

import math

import pytest
import torch
from helpers import tiny_llama

from alignkit.eval.pairwise import PairScores
from alignkit.eval.samples import (
    distinct_n,
    has_loop,
    kl_summary,
    length_bias,
    repetition_rate,
    sample_kl,
    text_summary,
)

VOCAB = 16


def _models():
    return tiny_llama(vocab_size=VOCAB, seed=0).eval(), tiny_llama(vocab_size=VOCAB, seed=1).eval()


@torch.no_grad()
def _next(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


@torch.no_grad()
def _exact_two_token_kl(policy, reference, prompt: list[int]) -> float:
    """KL(pi || ref) over all two-token continuations of ``prompt``, by enumeration."""
    lp1, lr1 = _next(policy, prompt), _next(reference, prompt)
    total = 0.0
    for a in range(VOCAB):
        lp2, lr2 = _next(policy, prompt + [a]), _next(reference, prompt + [a])
        p2 = lp2.exp()
        total += float(lp1[a].exp() * ((lp1[a] - lr1[a]) + (p2 * (lp2 - lr2)).sum()))
    return total


def test_full_kl_of_one_token_is_exact():
    policy, reference = _models()
    prompt = [3, 5, 7]
    terms = sample_kl(policy, reference, [prompt] * 3, [[1], [4], [9]], pad_id=0)
    lp, lr = _next(policy, prompt), _next(reference, prompt)
    exact = float((lp.exp() * (lp - lr)).sum())
    for row in terms["full"]:
        assert row.shape == (1,) and float(row[0]) == pytest.approx(exact, rel=1e-4)


def test_estimators_agree_with_enumerated_sequence_kl():
    policy, reference = _models()
    prompt = [3, 5, 7]
    exact = _exact_two_token_kl(policy, reference, prompt)
    g = torch.Generator().manual_seed(0)
    completions = []
    for _ in range(3000):  # ancestral samples of two tokens from the policy
        a = int(torch.multinomial(_next(policy, prompt).exp(), 1, generator=g))
        b = int(torch.multinomial(_next(policy, prompt + [a]).exp(), 1, generator=g))
        completions.append([a, b])
    terms = sample_kl(policy, reference, [prompt] * len(completions), completions, pad_id=0, batch_size=256)
    for kind in ("k1", "k3", "full"):
        sums = torch.stack([r.sum() for r in terms[kind]])
        stderr = float(sums.std()) / math.sqrt(len(sums))
        assert abs(float(sums.mean()) - exact) < 4 * stderr + 1e-6, kind
    k3 = torch.cat(terms["k3"])
    k2 = torch.cat(terms["k2"])
    assert (k3 >= 0).all() and (k2 >= 0).all()
    # the exact next-token KL has lower variance than the sampled log-ratio
    assert torch.stack([r.sum() for r in terms["full"]]).var() < torch.stack([r.sum() for r in terms["k1"]]).var()
    summary = kl_summary(terms)
    assert summary["k1"]["sequence"]["mean"] == pytest.approx(float(torch.stack([r.sum() for r in terms["k1"]]).mean()))
    assert summary["k3"]["per_token"] == pytest.approx(float(k3.mean()))


def test_same_model_has_zero_kl_and_empty_completions_are_kept_in_place():
    policy, _ = _models()
    terms = sample_kl(policy, policy, [[1, 2], [3, 4], [5]], [[6, 7], [], [8]], pad_id=0)
    assert terms["k1"][1].numel() == 0
    for kind in ("k1", "k2", "k3", "full"):
        assert all(float(r.abs().sum()) < 1e-5 for r in terms[kind])


def test_lora_reference_is_the_adapter_disabled():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(vocab_size=VOCAB, seed=0)
    plain = tiny_llama(vocab_size=VOCAB, seed=0).eval()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    prompts, completions = [[1, 2, 3]] * 2, [[4, 5], [6]]
    with_none = sample_kl(model, None, prompts, completions, pad_id=0)
    with_base = sample_kl(model, plain, prompts, completions, pad_id=0)
    for a, b in zip(with_none["full"], with_base["full"]):
        assert torch.allclose(a, b, atol=1e-5)
    assert float(with_none["full"][0].sum()) > 0  # the adapter (random init) changed the model


def test_repetition_loops_and_distinct_n():
    loop = "the cat sat on the mat " * 4
    assert repetition_rate("one two three four five") == 0
    assert repetition_rate(loop) > 0.6 and has_loop(loop)
    assert not has_loop("a b c d a b c d")  # twice is not a loop
    assert repetition_rate("too short") == 0
    assert distinct_n(["a b", "a c"], 1) == pytest.approx(3 / 4)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert math.isnan(distinct_n([""], 2))
    s = text_summary(["hello there", "", loop], token_counts=[2, 0, 24])
    assert s["responses"] == 3 and s["empty_rate"] == pytest.approx(1 / 3) and s["loop_rate"] == pytest.approx(1 / 3)
    assert s["length_tokens"]["max"] == 24


def test_length_bias_reads_a_learned_preference_for_longer():
    n = torch.tensor
    # 4 pairs: chosen is longer in pairs 0 and 1; pair 3 has equal lengths (left out)
    chosen_tokens, rejected_tokens = n([10.0, 12, 5, 7]), n([5.0, 6, 9, 7])
    reference = PairScores(n([-20.0, -25, -9, -7]), n([-10.0, -12, -18, -8]), chosen_tokens, rejected_tokens)
    # the policy raised the longer completion's log-prob by a lot, the shorter's not at all
    policy = PairScores(n([-5.0, -8, -9, -7]), n([-10.0, -12, -2, -8]), chosen_tokens, rejected_tokens)
    bias = length_bias(policy, reference)
    assert bias["pairs_differing_in_length"] == 3
    assert bias["reference_favours_longer"] == pytest.approx(0.0)  # summed log-probs favour short completions
    assert bias["implicit_reward_favours_longer"] == pytest.approx(1.0)
    assert bias["policy_favours_longer"] == pytest.approx(1.0)
    assert bias["chosen_is_longer"] == pytest.approx(2 / 3)
