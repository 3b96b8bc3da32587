"""token_logprobs: the fused chunked head equals the plain full-logits path, in values and gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import padded_batch, tiny_llama

import alignkit.logprobs as logprobs_mod
from alignkit.logprobs import (
    CompletionScorer,
    linear_label_logprobs,
    sequence_logprobs,
    supports_fused_head,
    token_logprobs,
)

VOCAB = 64


def _reference_logprobs(model, input_ids, attention_mask, completion_mask):
    """Independent computation: full log_softmax over the model's logits, token t scored from position t - 1."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32)
    for b in range(input_ids.shape[0]):
        for t in range(1, input_ids.shape[1]):
            if completion_mask[b, t]:
                out[b, t] = logp[b, t - 1, input_ids[b, t]]
    return out


def _values_and_grads(model, batch, fused, chunk_size=1024):
    model.zero_grad(set_to_none=True)
    lp = token_logprobs(model, *batch, fused=fused, chunk_size=chunk_size)
    # a non-uniform weighting so every position's gradient matters
    weights = torch.arange(1, lp.numel() + 1, dtype=torch.float32).reshape(lp.shape) / lp.numel()
    (lp * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), grads


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def model(request):
    return tiny_llama(tie_word_embeddings=request.param, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def batch():
    return padded_batch(VOCAB)


def test_tiny_model_tying(model):
    tied = model.config.tie_word_embeddings
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert supports_fused_head(model)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_fused_equals_plain_values_and_gradients(model, batch, chunk_size):
    fused_lp, fused_grads = _values_and_grads(model, batch, fused=True, chunk_size=chunk_size)
    plain_lp, plain_grads = _values_and_grads(model, batch, fused=False)
    assert fused_lp.dtype == torch.float32 and fused_lp.shape == batch[0].shape
    torch.testing.assert_close(fused_lp, plain_lp, atol=1e-5, rtol=0)
    names = {n for n, p in model.named_parameters()}
    assert set(fused_grads) == set(plain_grads) == names  # every parameter (head and embeddings) gets a gradient
    for name in names:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], atol=1e-5, rtol=0, msg=name)
    head = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    assert head in names and plain_grads[head].abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False])
def test_matches_independent_full_log_softmax(model, batch, fused):
    with torch.no_grad():
        lp = token_logprobs(model, *batch, fused=fused, chunk_size=3)
    torch.testing.assert_close(lp, _reference_logprobs(model, *batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_zero_outside_completion_mask_and_position_zero(model, batch, fused):
    input_ids, attention_mask, completion_mask = batch
    with torch.no_grad():
        lp = token_logprobs(model, input_ids, attention_mask, completion_mask, fused=fused)
    scored = completion_mask.bool().clone()
    scored[:, 0] = False
    assert (lp[~scored] == 0).all()
    assert (lp[scored] < 0).all()  # real log-probs of a random model are strictly negative
    # row 2's completion starts at position 0, which is never scored
    assert completion_mask[2, 0] == 1 and (lp[:, 0] == 0).all()
    assert int(scored.sum()) == 6 + 5 + 4


def test_sequence_logprobs_sum_and_mean(model, batch):
    input_ids, attention_mask, completion_mask = batch
    with torch.no_grad():
        lp = token_logprobs(model, input_ids, attention_mask, completion_mask)
    total = sequence_logprobs(lp, completion_mask)
    mean = sequence_logprobs(lp, completion_mask, average=True)
    assert total.shape == mean.shape == (3,)
    ref = _reference_logprobs(model, *batch)
    n_scored = [6, 5, 4]  # tokens in [4, 10), [2, 7), [1, 5)
    for b in range(3):
        assert total[b].item() == pytest.approx(ref[b].sum().item(), abs=1e-4)
        assert mean[b].item() == pytest.approx(ref[b].sum().item() / n_scored[b], abs=1e-5)


def test_sequence_logprobs_on_hand_made_values():
    token_logps = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, 0.0, -3.0, -5.0]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1]])  # row 1: position 0 is masked in but never scored
    assert sequence_logprobs(token_logps, mask).tolist() == [-3.0, -8.0]
    assert sequence_logprobs(token_logps, mask, average=True).tolist() == [-1.5, -4.0]
    # no scored token: the mean does not divide by zero
    assert sequence_logprobs(torch.zeros(1, 3), torch.tensor([[1, 0, 0]]), average=True).tolist() == [0.0]


@pytest.mark.parametrize("fused", [True, False])
def test_nothing_scored_gives_zeros_and_backward_works(model, batch, fused):
    input_ids, attention_mask, completion_mask = batch
    only_first = torch.zeros_like(completion_mask)
    only_first[:, 0] = 1  # position 0 is never scored: nothing in the batch is
    model.zero_grad(set_to_none=True)
    lp = token_logprobs(model, input_ids, attention_mask, only_first, fused=fused, chunk_size=2)
    assert lp.shape == input_ids.shape and (lp == 0).all()
    lp.sum().backward()  # must not fail on an empty selection
    assert sequence_logprobs(lp, only_first, average=True).tolist() == [0.0, 0.0, 0.0]


def test_completion_scorer_forward_equals_token_logprobs(model, batch):
    scorer = CompletionScorer(model, chunk_size=2)
    assert scorer.fused is True and scorer.chunk_size == 2
    with torch.no_grad():
        out = scorer(*batch)
        expected = token_logprobs(model, *batch, fused=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # the wrapped model's parameters are the scorer's parameters (what the trainer optimizes)
    assert {id(p) for p in scorer.parameters()} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("keep_softmax", [True, False], ids=["kept", "recomputed"])
def test_linear_label_logprobs_with_bias_matches_log_softmax(keep_softmax, monkeypatch):
    """Both backward paths (softmax kept from forward; recomputed when over KEEP_PROBS_BYTES) are exact, with a
    non-uniform incoming gradient, a bias and a last chunk shorter than the others; backward can run twice."""
    monkeypatch.setattr(logprobs_mod, "KEEP_PROBS_BYTES", 2**30 if keep_softmax else 0)
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=True)
    hidden = torch.randn(7, 8, requires_grad=True)
    labels = torch.randint(0, 11, (7,))
    weights = torch.linspace(-1.0, 2.0, 7)
    out = linear_label_logprobs(hidden, head, labels, chunk_size=3)
    (out * weights).sum().backward(retain_graph=True)
    first = hidden.grad.clone()
    hidden.grad = None
    head.zero_grad()
    (out * weights).sum().backward()
    torch.testing.assert_close(hidden.grad, first, atol=0, rtol=0)  # the kept softmax is not modified in place
    grads = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = None
    head.zero_grad()
    ref = torch.log_softmax(head(hidden), -1).gather(1, labels[:, None]).squeeze(1)
    (ref * weights).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for got, want in zip(grads, (hidden.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_softcapping_disables_fused_path(batch, monkeypatch):
    model = tiny_llama(vocab_size=VOCAB, seed=3)
    assert supports_fused_head(model)
    model.config.final_logit_softcapping = 30.0
    assert not supports_fused_head(model)
    scorer = CompletionScorer(model)
    assert scorer.fused is False

    def fail(*args, **kwargs):
        raise AssertionError("the fused head must not be used when logits are soft-capped")

    monkeypatch.setattr(logprobs_mod, "linear_label_logprobs", fail)
    with torch.no_grad():
        auto = token_logprobs(model, *batch)  # fused=None picks the plain path
        via_scorer = scorer(*batch)
    ref = _reference_logprobs(model, *batch)
    torch.testing.assert_close(auto, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(via_scorer, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "attr,value,fused",
    [("logit_scale", 0.5, False), ("logit_scale", 1.0, True), ("final_logit_softcapping", None, True)],
)
def test_logit_transform_attributes(attr, value, fused):
    model = tiny_llama(vocab_size=VOCAB, seed=4)
    setattr(model.config, attr, value)
    assert supports_fused_head(model) is fused


def test_softcapped_gemma2_uses_plain_path_and_is_exact(batch):
    import transformers

    torch.manual_seed(5)
    cfg = transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=0.05,
    )
    model = transformers.Gemma2ForCausalLM(cfg).float().eval()
    assert not supports_fused_head(model)
    with torch.no_grad():
        auto = token_logprobs(model, *batch)
        forced_fused = token_logprobs(model, *batch, fused=True)
    ref = _reference_logprobs(model, *batch)
    torch.testing.assert_close(auto, ref, atol=1e-5, rtol=0)
    # the fused head ignores the soft-cap, which is exactly why it must not be picked here
    assert (forced_fused - ref).abs().max() > 1e-3


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_autocast_close_to_fp32(batch, fused):
    model = tiny_llama(vocab_size=VOCAB, seed=6)
    with torch.no_grad():
        fp32 = token_logprobs(model, *batch, fused=fused)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = token_logprobs(model, *batch, fused=fused, chunk_size=4)
    assert bf16.dtype == torch.float32
    bf16.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.lm_head.weight.grad.dtype == torch.float32  # fp32 master weights keep fp32 gradients
    scored = batch[2].bool().clone()
    scored[:, 0] = False
    assert (bf16[~scored] == 0).all()
    torch.testing.assert_close(bf16.detach(), fp32, atol=0.1, rtol=0.05)


PAIRS = [  # (prompt, chosen, rejected) token ids: uneven lengths, one without a prompt
    ([1, 5, 6, 7], [8, 9, 2], [10, 2]),
    ([1, 11], [12, 13, 14, 15, 2], [16, 17, 18, 2]),
    ([], [20, 21, 2], [22, 2]),
]


def test_prefix_shared_pairs_equal_plain_values_and_gradients():
    """One sequence per pair (prompt once, 4D mask, rejected positions restarting after the prompt), padded rows
    or all pairs packed in one row, gives the summed log-probs and gradients of the two-row layout; an empty prompt
    and uneven lengths included. Packed rows switch the model to per-pair (segmented) SDPA."""
    from alignkit.data.collate import collate_pairs, collate_pairs_shared
    from alignkit.data.tokenize import TokenizedPair
    from alignkit.logprobs import CompletionScorer, sequence_logprobs, shared_inputs
    from alignkit.models.attention import SEGMENTED

    pairs = [TokenizedPair(p, c, r, str(i)) for i, (p, c, r) in enumerate(PAIRS)]
    results = {}
    for layout in ("plain", "shared", "packed"):
        model = tiny_llama(vocab_size=64, attn_implementation="sdpa")
        scorer = CompletionScorer(model)
        if layout == "plain":
            b = collate_pairs(pairs, pad_id=0)
            sums = sequence_logprobs(scorer(b["input_ids"], b["attention_mask"], b["completion_mask"]),
                                     b["completion_mask"])  # fmt: skip
        else:
            b = collate_pairs_shared(pairs, pad_id=0, packed=layout == "packed")
            sums = scorer(b["input_ids"], b["attention_mask"], shared=shared_inputs(b))
            assert b["completion_tokens"].tolist() == [3, 5, 2, 2, 4, 1]  # first token of "c" has no predecessor
            assert b["input_ids"].shape == ((1, 25) if layout == "packed" else (3, 11))
        assert model.config._attn_implementation == (SEGMENTED if layout == "packed" else "sdpa")
        (sums * torch.arange(1.0, 7.0)).sum().backward()
        results[layout] = (sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    for layout in ("shared", "packed"):
        torch.testing.assert_close(results[layout][0], results["plain"][0], atol=1e-5, rtol=1e-5)
        for name, grad in results["plain"][1].items():
            torch.testing.assert_close(results[layout][1][name], grad, atol=1e-5, rtol=1e-4)


def test_segmented_sdpa_equals_full_mask_sdpa_and_skips_cross_blocks(monkeypatch):
    """Per-block SDPA over a packed row equals SDPA with the whole block-diagonal mask; it calls SDPA once per
    segment on that segment's slice only; without segment lengths it is transformers' SDPA unchanged."""
    import transformers.integrations.sdpa_attention as sdpa_mod

    from alignkit.data.collate import collate_pairs_shared
    from alignkit.data.tokenize import TokenizedPair
    from alignkit.models import attention

    model = tiny_llama(vocab_size=64)
    module = model.model.layers[0].self_attn
    b = collate_pairs_shared([TokenizedPair(p, c, r, "x") for p, c, r in PAIRS], pad_id=0, packed=True)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 25, 8, generator=g)
    k, v = torch.randn(1, 2, 25, 8, generator=g), torch.randn(1, 2, 25, 8, generator=g)
    full, _ = sdpa_mod.sdpa_attention_forward(module, q, k, v, b["attention_mask"], scaling=8**-0.5)
    seen = []
    real = sdpa_mod.sdpa_attention_forward
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda m, q, *a, **kw: seen.append(q.shape[2]) or real(m, q, *a, **kw)
    )
    lengths = b["segment_lengths"].tolist()
    got, _ = attention.segmented_sdpa(module, q, k, v, b["attention_mask"], segment_lengths=lengths, scaling=8**-0.5)
    assert seen == lengths == [9, 11, 5]
    assert got.shape == (1, 25, 4, 8)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)
    same, _ = attention.segmented_sdpa(module, q, k, v, b["attention_mask"], scaling=8**-0.5)
    torch.testing.assert_close(same, full, atol=0, rtol=0)


def test_segmented_sdpa_runs_bf16_attention_in_fp32_on_cpu(monkeypatch):
    """Under bf16 autocast on CPU the per-segment SDPA gets fp32 inputs (faster there, and more precise) and the
    result comes back in bf16, close to the fp32 computation."""
    import transformers.integrations.sdpa_attention as sdpa_mod

    from alignkit.data.collate import collate_pairs_shared
    from alignkit.data.tokenize import TokenizedPair
    from alignkit.models import attention

    module = tiny_llama(vocab_size=64).model.layers[0].self_attn
    b = collate_pairs_shared([TokenizedPair(p, c, r, "x") for p, c, r in PAIRS], pad_id=0, packed=True)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 25, 8, generator=g) for h in (4, 2, 2))
    expected, _ = sdpa_mod.sdpa_attention_forward(module, q, k, v, b["attention_mask"], scaling=8**-0.5)
    dtypes, real = [], sdpa_mod.sdpa_attention_forward
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda m, q, *a, **kw: dtypes.append(q.dtype) or real(m, q, *a, **kw)
    )
    lengths = b["segment_lengths"].tolist()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = attention.segmented_sdpa(
            module,
            q.bfloat16(),
            k.bfloat16(),
            v.bfloat16(),
            b["attention_mask"],
            segment_lengths=lengths,
            scaling=8**-0.5,
        )
    assert dtypes == [torch.float32] * 3 and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.03, rtol=0.02)


def test_use_segmented_attention_switches_sdpa_only(tmp_path):
    from alignkit.models.attention import SEGMENTED, use_segmented_attention

    sdpa, eager = tiny_llama(vocab_size=64, attn_implementation="sdpa"), tiny_llama(attn_implementation="eager")
    assert use_segmented_attention(sdpa) and use_segmented_attention(sdpa)  # idempotent
    assert sdpa.config._attn_implementation == SEGMENTED
    assert not use_segmented_attention(eager) and eager.config._attn_implementation == "eager"
    sdpa.save_pretrained(tmp_path)  # the switch is not saved: the model loads anywhere without alignkit
    assert SEGMENTED not in (tmp_path / "config.json").read_text()


def test_prefix_shared_mask_layout():
    from alignkit.data.collate import collate_pairs_shared
    from alignkit.data.tokenize import TokenizedPair

    b = collate_pairs_shared([TokenizedPair([1, 2], [3, 4], [5], "a"), TokenizedPair([1], [3], [5], "b")], pad_id=0)
    mask = b["attention_mask"][0, 0]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 2]
    assert mask[4].tolist() == [True, True, False, False, True]  # rejected sees the prompt, not chosen
    assert mask[3].tolist() == [True, True, True, True, False]
    pad_row = b["attention_mask"][1, 0]
    assert pad_row[3].tolist() == [False, False, False, True, False]  # padding attends to itself only
    assert int(b["logical_tokens"]) == (2 * 2 + 2 + 1) + (2 * 1 + 1 + 1)


def test_packed_pairs_layout():
    from alignkit.data.collate import collate_pairs_shared
    from alignkit.data.tokenize import TokenizedPair

    pairs = [TokenizedPair([1, 2], [3, 4], [5], "a"), TokenizedPair([1], [3], [5], "b")]
    b = collate_pairs_shared(pairs, pad_id=0, packed=True)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 1, 3, 5]]  # no padding
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 1]]
    assert b["segment_lengths"].tolist() == [5, 3]
    mask = b["attention_mask"][0, 0]
    assert mask[:5, 5:].sum() == 0 and mask[5:, :5].sum() == 0  # pairs never see each other
    assert mask[7].tolist() == [False] * 5 + [True, False, True]  # rejected of pair 2: its prompt and itself
    assert b["last_index"].tolist() == [3, 6, 4, 7]  # chosen ends, then rejected ends, flat into the row
    assert b["logp_index"].tolist() == [1, 2, 1, 5, 5]  # chosen 3, 4 and rejected 5 of pair 1; pair 2
    assert b["logp_segments"].tolist() == [0, 0, 2, 1, 3]
    padded = collate_pairs_shared(pairs, pad_id=0)
    assert int(b["logical_tokens"]) == int(padded["logical_tokens"])
    assert "segment_lengths" not in padded


def test_collate_groups_shared_layout():
    """Two groups (prompt 1 with 2 completions, prompt 2 with 1): one packed row, each completion restarting its
    positions after its prompt, seeing only the prompt and its own earlier tokens; scored tokens map back to the
    right-padded (B, W) layout."""
    from alignkit.data.collate import collate_groups_shared

    prompts = [[1, 2, 3], [1, 2, 3], [7, 8]]
    completions = [[4, 5], [6], [9, 10, 11]]
    b = collate_groups_shared(prompts, completions)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 3, 4]]
    assert b["segment_lengths"].tolist() == [6, 5]
    mask = b["attention_mask"][0, 0]
    assert mask[5].tolist()[:6] == [True, True, True, False, False, True]  # token 6 sees the prompt and itself
    assert not mask[6, :6].any() and not mask[:6, 6:].any()  # the groups never see each other
    # predicting 4 from position 2 (prompt end), 5 from 3, 6 from 2 (its own branch starts at the prompt), ...
    assert b["logp_index"].tolist() == [2, 3, 2, 7, 8, 9]
    assert b["logp_labels"].tolist() == [4, 5, 6, 9, 10, 11]
    width = 5  # the longest prompt + completion
    assert b["logp_target"].tolist() == [0 * width + 3, 0 * width + 4, 1 * width + 3, 2 * width + 2, 2 * width + 3,
                                         2 * width + 4]  # fmt: skip
    assert int(b["logical_tokens"]) == 5 + 4 + 5


def test_the_prefix_sharing_probe_falls_back_when_layouts_differ():
    """``layouts_agree``: True when the shared layout scores as the padded one; False (and a log line naming what
    differs) otherwise; the model's train/eval mode is restored either way."""
    from alignkit.logprobs import layouts_agree

    model = torch.nn.Linear(2, 2).train()
    seen = []
    same = torch.tensor([1.0, 2.0])
    assert layouts_agree(model, lambda: same, lambda: same + 1e-6, "log-probs", seen.append)
    assert not seen and model.training
    modes = []
    shared = lambda: (modes.append(model.training), same + 0.5)[1]  # noqa: E731
    assert not layouts_agree(model, lambda: same, shared, "rewards", seen.append)
    assert modes == [False] and model.training  # scored in eval mode, train mode back
    assert len(seen) == 1 and "prefix sharing off" in seen[0] and "rewards" in seen[0] and "0.5" in seen[0]
