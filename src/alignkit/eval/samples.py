"""Alignment metrics on sampled completions: KL to a reference, length, repetition, diversity, score distributions.

    prompts -> completions sampled from the policy -> per-token log-probs under policy and reference
            -> k1 / k2 / k3 per token and summed per sequence, and the exact next-token KL along each sample

For a token y_t sampled from pi after prefix y_<t, with log r_t = log pi_ref(y_t) - log pi(y_t) (Schulman 2020):
k1 = -log r (unbiased, can be negative), k2 = (log r)^2 / 2 (biased, low variance), k3 = (r - 1) - log r
(unbiased, >= 0). Summed over a sampled sequence, k1 and k3 are unbiased estimates of the sequence-level
KL(pi || pi_ref) = E_y~pi [log pi(y) / pi_ref(y)]. ``full`` sums the exact next-token KL
sum_v pi(v | y_<t) log pi(v | y_<t) / pi_ref(v | y_<t) along the sample: also unbiased for the sequence KL (by the
chain rule), and of lower variance. All of them assume the samples came from pi itself: temperature 1, no
top-k / top-p truncation.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext

import numpy as np
import torch

from alignkit.data.collate import pad_sequences
from alignkit.logprobs import supports_fused_head, unwrap_causal_lm
from alignkit.rl.kl import kl_estimate

KL_KINDS = ("k1", "k2", "k3", "full")


@torch.no_grad()
def _completion_logps(model, batch: dict, disable_adapter: bool = False) -> list[torch.Tensor]:
    """Per row, log softmax of the next-token logits at the positions that predict completion tokens:
    ``(L_i, vocab)`` float32. Only those positions go through the output head (when the model allows it)."""
    scored = batch["completion_mask"][:, 1:].bool()  # token t + 1 is predicted at position t
    with model.disable_adapter() if disable_adapter else nullcontext():
        if supports_fused_head(model):
            lm = unwrap_causal_lm(model)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
            hidden = lm.base_model(**inputs).last_hidden_state[:, :-1]
            head = lm.get_output_embeddings()
            return [head(hidden[b][scored[b]]).float().log_softmax(-1) for b in range(hidden.shape[0])]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return [logits[b, :-1][scored[b]].float().log_softmax(-1) for b in range(logits.shape[0])]


@torch.no_grad()
def sample_kl(
    policy,
    reference,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    batch_size: int = 8,
) -> dict[str, list[torch.Tensor]]:
    """Per completion, per-token KL terms ``(L_i,)`` for each kind in ``KL_KINDS``, plus ``logp`` and ``ref_logp``.

    ``reference`` None: the reference is ``policy`` with its LoRA adapter disabled (a PEFT model), as in training.
    """
    device = next(policy.parameters()).device
    out: dict[str, list] = {k: [None] * len(prompts) for k in (*KL_KINDS, "logp", "ref_logp")}
    modes = [(m, m.training) for m in {id(policy): policy, id(reference): reference}.values() if m is not None]
    for m, _ in modes:
        m.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    try:
        for s in range(0, len(order), batch_size):
            idx = [i for i in order[s : s + batch_size] if completions[i]]
            if not idx:
                continue
            batch = pad_sequences([prompts[i] for i in idx], [completions[i] for i in idx], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logp = _completion_logps(policy, batch)
            ref = _completion_logps(reference if reference is not None else policy, batch, reference is None)
            scored = batch["completion_mask"][:, 1:].bool()
            target = batch["input_ids"][:, 1:]
            for row, i in enumerate(idx):
                lp_all, ref_all = logp[row], ref[row]  # (L, vocab)
                tokens = target[row][scored[row]]
                lp = lp_all.gather(1, tokens[:, None])[:, 0]
                rlp = ref_all.gather(1, tokens[:, None])[:, 0]
                out["logp"][i], out["ref_logp"][i] = lp.cpu(), rlp.cpu()
                for kind in ("k1", "k2", "k3"):
                    out[kind][i] = kl_estimate(lp, rlp, kind).cpu()
                out["full"][i] = (lp_all.exp() * (lp_all - ref_all)).sum(-1).cpu()
    finally:
        for m, training in modes:
            m.train(training)
    for k, values in out.items():
        out[k] = [v if v is not None else torch.zeros(0) for v in values]
    return out


def distribution(values) -> dict[str, float]:
    """Mean, std, min, p10, p50, p90, max of a list of numbers (nan when empty)."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return {k: float("nan") for k in ("mean", "std", "min", "p10", "p50", "p90", "max")}
    p10, p50, p90 = np.quantile(x, [0.1, 0.5, 0.9])
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "p10": float(p10),
            "p50": float(p50), "p90": float(p90), "max": float(x.max())}  # fmt: skip


def kl_summary(terms: dict[str, list[torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Per kind: ``per_token`` (mean over all completion tokens) and ``sequence`` (distribution of per-sequence
    sums), e.g. ``{"k3": {"per_token": 0.02, "sequence": {"mean": 1.3, ...}}}``."""
    out = {}
    for kind in KL_KINDS:
        rows = terms[kind]
        tokens = torch.cat(rows) if rows else torch.zeros(0)
        out[kind] = {
            "per_token": float(tokens.mean()) if tokens.numel() else float("nan"),
            "sequence": distribution(float(r.sum()) for r in rows),
        }
    return out


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier n-gram of the same text (0 = none, -> 1 for a
    loop); 0 for texts shorter than n words."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def has_loop(text: str, n: int = 4, times: int = 3) -> bool:
    """True when some word n-gram occurs at least ``times`` times: the repetition loop of a degenerate model."""
    counts = Counter(ngrams(words(text), n))
    return bool(counts) and max(counts.values()) >= times


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over ``texts`` (nan without any)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def text_summary(texts: list[str], token_counts: list[int] | None = None) -> dict:
    """Length (tokens when given, words, characters), repetition, loops and diversity of ``texts``."""
    out = {
        "responses": len(texts),
        "length_words": distribution(len(words(t)) for t in texts),
        "length_chars": distribution(len(t) for t in texts),
        "repetition_4gram": float(np.mean([repetition_rate(t) for t in texts])) if texts else float("nan"),
        "loop_rate": float(np.mean([has_loop(t) for t in texts])) if texts else float("nan"),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "empty_rate": float(np.mean([not t.strip() for t in texts])) if texts else float("nan"),
    }
    if token_counts is not None:
        out["length_tokens"] = distribution(token_counts)
    return out


def length_bias(policy, reference) -> dict[str, float]:
    """Does training move the model toward longer responses? From ``PairScores`` of policy and reference on the
    same held-out pairs (``alignkit.eval.pairwise.score_pairs``): among pairs whose two completions differ in
    length, the share where each model's summed log-prob favours the longer one, and the share where the implicit
    reward log(pi/pi_ref) does (0.5 = no length preference; well above the reference's share = a learned bias)."""
    longer_chosen = policy.chosen_tokens > policy.rejected_tokens
    differ = policy.chosen_tokens != policy.rejected_tokens

    def favours_longer(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
        prefers_chosen = chosen > rejected
        picks_longer = prefers_chosen == longer_chosen
        return picks_longer[differ].float().mean().item() if differ.any() else float("nan")

    return {
        "pairs_differing_in_length": int(differ.sum()),
        "reference_favours_longer": favours_longer(reference.chosen, reference.rejected),
        "policy_favours_longer": favours_longer(policy.chosen, policy.rejected),
        "implicit_reward_favours_longer": favours_longer(
            policy.chosen - reference.chosen, policy.rejected - reference.rejected
        ),
        "chosen_is_longer": longer_chosen[differ].float().mean().item() if differ.any() else float("nan"),
    }
