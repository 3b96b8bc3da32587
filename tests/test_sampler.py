"""The sampler against transformers.generate (greedy: token-identical) and against the trainer's log-probs (the same
tokens score the same, also after an optimizer step: no stale weights); seeds, finish reasons, filters, bad input."""

from __future__ import annotations

import pytest
import torch

from alignkit.data import Tokenizer
from alignkit.errors import UserError
from alignkit.generation.sampler import Sampler, SamplingParams, filtered_probs
from alignkit.logprobs import token_logprobs
from alignkit.models import load_model, load_tokenizer

PROMPTS = ["how is the weather today ?", "tell me a joke", "hi"]


def chatty_model():
    """A tiny random Llama over the word-level test vocabulary, initialized wide enough (std 0.3) that greedy
    decoding wanders instead of repeating one token, so greedy comparisons mean something."""
    from helpers import VOCAB, tiny_llama

    return tiny_llama(vocab_size=len(VOCAB) + 2, initializer_range=0.3, eos_token_id=VOCAB["<|im_end|>"])


@pytest.fixture(scope="module")
def tiny():
    from helpers import make_word_tokenizer

    return chatty_model(), Tokenizer(make_word_tokenizer())


def hf_greedy(model, tok: Tokenizer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers.generate, greedy, left padding: the oracle."""
    width = max(map(len, prompt_ids))
    ids = torch.tensor([[tok.pad_id] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_id,
        eos_token_id=tok.eos_id, temperature=None, top_p=None, top_k=None,
    )  # fmt: skip
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(tok.eos_id) + 1] if tok.eos_id in row else row)
    return rows


def trainer_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """The trainer's per-token log-probs of ``completion`` after ``prompt`` (completion tokens only)."""
    ids = torch.tensor([prompt + completion])
    mask = torch.ones_like(ids)
    completion_mask = torch.tensor([[0] * len(prompt) + [1] * len(completion)])
    return token_logprobs(model, ids, mask, completion_mask, temperature=temperature)[0, len(prompt) :]


def test_greedy_is_token_identical_to_transformers_generate(tiny):
    model, tok = tiny
    sampler = Sampler(model, tok)
    ids = [sampler.prompt_ids(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == 3  # ragged prompts: left padding is exercised
    assert len({tuple(r) for r in hf_greedy(model, tok, ids, 24)}) == 3  # and the model says different things
    got = sampler.sample(ids, SamplingParams(n=2, max_new_tokens=24, temperature=0), seeds=[0, 1, 2])
    expected = hf_greedy(model, tok, ids, 24)
    for completions, want in zip(got, expected):
        assert [c.token_ids for c in completions] == [want, want]  # both samples of a greedy prompt are the same


def test_greedy_matches_with_eos_and_compaction():
    """Rows that end at different steps leave the batch (compaction at every finish) and the rest still matches
    transformers. A token the greedy rows produce at different steps plays EOS."""
    from helpers import make_word_tokenizer

    model, tok = chatty_model(), Tokenizer(make_word_tokenizer())
    sampler = Sampler(model, tok, compact_at=0.0)
    ids = [sampler.prompt_ids(p) for p in PROMPTS + ["one two three four five six", "good bad", "yes"]]
    free = [r[0].token_ids for r in sampler.sample(ids, SamplingParams(max_new_tokens=30, temperature=0), [0] * 6)]
    first = {}
    for row in free:
        for t in row:
            first.setdefault(t, set()).add(row.index(t))
    eos = max(first, key=lambda t: len(first[t]))  # the token that ends rows at the most different steps
    assert len(first[eos]) >= 2
    tok.eos_id = model.generation_config.eos_token_id = eos
    sampler = Sampler(model, tok, compact_at=0.0)
    got = sampler.sample(ids, SamplingParams(max_new_tokens=30, temperature=0), seeds=list(range(len(ids))))
    assert [c[0].token_ids for c in got] == hf_greedy(model, tok, ids, 30)
    assert sampler.stats.row_steps < len(ids) * 29  # finished rows really left the batch
    ends = [len(c[0].token_ids) for c in got if c[0].finish_reason == "eos"]
    assert len(set(ends)) >= 2, ends
    for c in got:
        if c[0].finish_reason == "eos":
            assert c[0].token_ids[-1] == eos and eos not in c[0].token_ids[:-1]  # EOS kept: training scores it


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("lora", [False, True])
def test_sampled_logprobs_equal_trainer_logprobs_also_after_an_update(tiny, temperature, lora):
    import copy

    from alignkit.config import LoRAConfig
    from alignkit.models.load import apply_lora

    base, tok = tiny
    model = copy.deepcopy(base)
    if lora:
        model = apply_lora(model, LoRAConfig(r=4, dropout=0.0), None)
    sampler = Sampler(model, tok)
    ids = [sampler.prompt_ids(p) for p in PROMPTS[:2]]
    params = SamplingParams(n=3, max_new_tokens=16, temperature=temperature)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for round_ in range(2):
        samples = sampler.sample(ids, params, seeds=[round_, round_ + 10])
        for prompt, completions in zip(ids, samples):
            for c in completions:
                want = trainer_logprobs(model, prompt, c.token_ids, temperature)
                # fp32; the sampler multiplies by LoRA-merged weights W + BA s, the trainer by W and then A, B:
                # equal up to rounding on this wide-initialized model's large logits
                torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=3e-4 if lora else 2e-5, rtol=1e-5)
        # one optimizer step on the policy: the next samples must come from (and be scored by) the new weights
        c = samples[0][0]
        loss = -trainer_logprobs(model, ids[0], c.token_ids, temperature).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        after = trainer_logprobs(model, ids[0], c.token_ids, temperature)
        assert (after - torch.tensor(c.logprobs)).abs().max() > 1e-3  # the update changed the policy


def test_seeded_samples_do_not_depend_on_the_batch(tiny):
    model, tok = tiny
    sampler = Sampler(model, tok)
    ids = [sampler.prompt_ids(p) for p in PROMPTS]
    params = SamplingParams(n=4, max_new_tokens=12, temperature=1.0)
    together = sampler.sample(ids, params, seeds=[5, 6, 7])
    alone = sampler.sample([ids[1]], params, seeds=[6])
    assert [c.token_ids for c in together[1]] == [c.token_ids for c in alone[0]]
    # rows finishing at different steps and leaving the batch at different times do not change a prompt's samples
    long = SamplingParams(n=4, max_new_tokens=40, temperature=1.0)
    lazy = Sampler(model, tok, compact_at=0.9).sample(ids, long, seeds=[5, 6, 7])
    p = next(p for p, g in enumerate(lazy) if any(c.finish_reason == "eos" for c in g))  # rows that ended early
    assert any(c.finish_reason == "length" for g in lazy for c in g)
    eager = Sampler(model, tok, compact_at=0.0).sample([ids[p]], long, seeds=[5 + p])
    assert [c.token_ids for c in lazy[p]] == [c.token_ids for c in eager[0]]
    again = sampler.sample(ids, params, seeds=[5, 6, 7])
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in together]
    other = sampler.sample(ids, params, seeds=[8, 6, 7])
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in together[0]]
    assert len({tuple(c.token_ids) for c in together[0]}) > 1  # the n samples of one prompt differ


def test_small_row_budget_splits_prompts_into_chunks(tiny):
    model, tok = tiny
    ids = [Sampler(model, tok).prompt_ids(p) for p in PROMPTS]
    params = SamplingParams(n=2, max_new_tokens=10, temperature=1.0)
    wide = Sampler(model, tok, max_rows=64).sample(ids, params, seeds=[1, 2, 3])
    narrow = Sampler(model, tok, max_rows=2).sample(ids, params, seeds=[1, 2, 3])
    assert [[c.token_ids for c in g] for g in wide] == [[c.token_ids for c in g] for g in narrow]


def test_length_and_stop_strings(tiny):
    model, tok = tiny
    sampler = Sampler(model, tok)
    ids = [sampler.prompt_ids(PROMPTS[0])]
    free = sampler.sample(ids, SamplingParams(max_new_tokens=20, temperature=0), [0])[0][0]
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    # stop at a string the greedy continuation is known to contain
    words = free.text.split()
    assert len(words) >= 3, free.text
    stop = words[2][:3]
    stopped = sampler.sample(ids, SamplingParams(max_new_tokens=20, temperature=0, stop=(stop,)), [0])[0][0]
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text and free.text.startswith(stopped.text)
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]
    assert stop in tok.hf.decode(stopped.token_ids, skip_special_tokens=True)  # tokens end with the stop string
    assert stop not in tok.hf.decode(stopped.token_ids[:-1], skip_special_tokens=True)  # ...and not before


def test_filters_that_leave_one_token_are_greedy(tiny):
    model, tok = tiny
    sampler = Sampler(model, tok)
    ids = [sampler.prompt_ids(p) for p in PROMPTS[:2]]
    greedy = sampler.sample(ids, SamplingParams(max_new_tokens=10, temperature=0), [0, 1])
    for params in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=0.999)):
        got = sampler.sample(ids, SamplingParams(max_new_tokens=10, temperature=1.0, **params), [3, 4])
        assert [g[0].token_ids for g in got] == [g[0].token_ids for g in greedy], params


def test_filtered_probs():
    logp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert filtered_probs(logp, top_k=2)[0].tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])
    assert filtered_probs(logp, top_p=0.8)[0].tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])  # 0.5+0.3 >= 0.8
    assert filtered_probs(logp, top_p=0.81)[0].tolist() == pytest.approx([0.5, 0.3, 0.15, 0.0])
    assert filtered_probs(logp, min_p=0.5)[0].tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])  # p >= 0.25
    assert filtered_probs(logp)[0].tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(n=0), "n"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=1.0), "min_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop=("",)), "stop"),
    ],
)
def test_bad_sampling_params_are_clear_errors(tiny, bad, field):
    model, tok = tiny
    with pytest.raises(UserError, match=field):
        Sampler(model, tok).sample([[1, 2]], SamplingParams(**bad), [0])


def test_empty_prompt_is_refused(tiny):
    model, tok = tiny
    with pytest.raises(UserError, match="empty prompt"):
        Sampler(model, tok).sample([[]], SamplingParams(), [0])


@pytest.mark.slow
def test_embedded_model_greedy_matches_transformers_generate():
    model, hf = load_model(None), load_tokenizer(None)
    tok = Tokenizer(hf)
    sampler = Sampler(model, tok)
    ids = [sampler.prompt_ids(p) for p in ["How do I boil an egg?", "Name a color.", "What is 12 times 3?"]]
    got = sampler.sample(ids, SamplingParams(max_new_tokens=32, temperature=0), [0, 1, 2])
    assert [g[0].token_ids for g in got] == hf_greedy(model, tok, ids, 32)


def test_sample_categorical_is_the_inverse_cdf():
    from alignkit.generation.sampler import sample_categorical

    g = torch.Generator().manual_seed(0)
    v = 3000  # not a multiple of the block: padding is exercised
    weights = torch.rand(2, v, generator=g) ** 8  # peaked, unnormalized
    u = torch.rand(20000, dtype=torch.float64, generator=g)
    rows = weights[0].expand(len(u), v).contiguous()
    draws = sample_categorical(rows, u, block=256)
    cdf = (weights[0].double() / weights[0].double().sum()).cumsum(0)
    expected = torch.searchsorted(cdf, u, right=True).clamp(max=v - 1)
    assert (draws == expected).float().mean() > 0.999  # the same token as an exact float64 inverse CDF
    one_hot = torch.zeros(3, 5)
    one_hot[0, 4], one_hot[1, 0], one_hot[2, 2] = 1.0, 2.0, 0.5
    assert sample_categorical(one_hot, torch.tensor([0.999, 0.0, 0.5], dtype=torch.float64), block=2).tolist() == [
        4,
        0,
        2,
    ]


def test_load_sampler_turns_a_model_spec_into_a_ready_sampler(tiny_model_dir):
    """``load_sampler``: model + tokenizer + sampler + precision from a directory; keywords or ``SamplingParams``
    give the same samples; ``ready_sampler`` wraps a live model the same way."""
    from alignkit.generation import SamplingParams, load_sampler, ready_sampler

    ready = load_sampler(tiny_model_dir, "cpu", dtype="fp32", max_rows=4)
    assert not ready.bf16 and ready.device.type == "cpu" and ready.sampler.max_rows == 4
    by_keywords = ready.generate(["hello there"], n=2, max_new_tokens=3, temperature=1.0, seed=5)
    by_params = ready.generate(["hello there"], SamplingParams(n=2, max_new_tokens=3, temperature=1.0), seed=5)
    assert [c.token_ids for c in by_keywords[0]] == [c.token_ids for c in by_params[0]] and len(by_keywords[0]) == 2
    live = ready_sampler(ready.model, ready.tok.hf, "fp32")
    assert live.model is ready.model and not live.bf16 and ready_sampler(ready.model, ready.tok, "bf16").bf16
    ids = ready.sampler.prompt_ids("hello there")
    greedy = SamplingParams(max_new_tokens=2)
    assert [c.token_ids for c in live.sample([ids], greedy, [0])[0]] == [
        c.token_ids for c in ready.sample([ids], greedy, [0])[0]
    ]
