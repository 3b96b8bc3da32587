"""``alignkit eval metrics``: how a trained policy differs from its reference, measured on samples.

    prompts -> k samples per prompt from the policy and from the reference (same seeds)
      -> KL(policy || reference) on the policy's samples (k1 / k2 / k3 / exact next-token, per token and per sequence)
      -> length, repetition, loops, distinct-n of both
      -> [reward model] score distributions of both, and the policy's win rate over the reference per prompt
         (on those samples, or on one response per prompt each at ``winrate_temperature``, 0 = greedy)
      -> [pairs] held-out pairwise accuracy, implicit-reward accuracy, and the length-bias check
      -> [safety] refusal rate on harmful prompts and over-refusal on benign-but-edgy ones, greedy, for both

The reference of a LoRA adapter is its base model; of a full model, the embedded default unless given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignkit.errors import UserError
from alignkit.eval.samples import kl_summary, length_bias, sample_kl, text_summary
from alignkit.generation import ReadySampler, load_sampler


@dataclass
class Settings:
    """Sampling for the metrics: ``samples`` per prompt at ``temperature`` (1 = the policy itself, which the KL
    estimators assume), ``max_new_tokens`` each; safety responses are greedy with ``safety_tokens``.
    ``winrate_temperature``: None = the win rate compares the mean reward of those samples per prompt; a number =
    it compares one fresh response per prompt of each model at that temperature (0 = greedy, what a user sees at
    low temperature; a 135M model's T=1 samples are mostly noise to a judge)."""

    samples: int = 2
    max_new_tokens: int = 96
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 8
    safety_tokens: int = 96
    max_length: int = 512  # pairs: prompt + completion tokens
    winrate_temperature: float | None = None

    def validate(self) -> None:
        if self.samples < 1:
            raise UserError(f"--samples {self.samples}. Fix: sample at least 1 completion per prompt")
        if self.temperature <= 0:
            raise UserError(f"--temperature {self.temperature}. Fix: sample with a temperature > 0 (1 = the policy)")
        if self.winrate_temperature is not None and self.winrate_temperature < 0:
            raise UserError(f"--winrate-temperature {self.winrate_temperature}. Fix: use 0 (greedy) or more")
        if self.max_new_tokens < 1 or self.safety_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1. Fix: e.g. --max-new-tokens 96")


def default_reference(policy: str) -> str:
    """The base model of a LoRA adapter dir, else the embedded default."""
    from alignkit.config import EMBEDDED_MODEL
    from alignkit.models.load import resolve_model_path

    adapter = Path(resolve_model_path(policy)) / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if base:
            return base
    return EMBEDDED_MODEL


def run_metrics(
    policy: str,
    reference: str | None,
    prompts: list[dict],
    settings: Settings,
    reward_model=None,
    pairs: list | None = None,
    safety: list[dict] | None = None,
    device: str = "auto",
    log=print,
) -> dict:
    """Everything above as one JSON-ready dict (``kind`` "metrics"). ``prompts``: records with ``prompt`` (and
    optionally ``category``); ``reward_model``: an ``alignkit.reward_model.RewardModel``, or its directory, loaded
    only once both models are released (the peak holds two models, not three); ``pairs``: ``PairwiseExample``s;
    ``safety``: safety records (``alignkit.eval.safety.load_safety_prompts``).

    A LoRA adapter measured against its own base shares one copy of the base weights: the reference is the policy
    with its adapter disabled (as in training), not a second model."""
    import gc

    from alignkit.models import pick_device
    from alignkit.models.cpu_memory import give_back_freed_memory

    settings.validate()
    reference = reference or default_reference(policy)
    pol, ref = load_pair(policy, reference, str(pick_device(device)))
    texts = [r["prompt"] for r in prompts]
    k, s = settings.samples, settings
    shared = " (its adapter disabled, the same weights)" if ref.adapter_off else ""
    log(f"sampling {k} per prompt for {len(texts)} prompts from {policy} and from {reference}{shared} "
        f"(T={s.temperature})")  # fmt: skip
    # each phase packs a copy of the weights or holds logits; its freed memory goes back before the next
    pol_c = pol.generate(texts, n=k, max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=s.seed)
    give_back_freed_memory()
    ref_c = ref.generate(texts, n=k, max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=s.seed)
    give_back_freed_memory()
    rows = [(pol.sampler.prompt_ids(p), c.token_ids) for p, group in zip(texts, pol_c) for c in group]
    ref_model = None if ref.adapter_off else ref.model
    terms = sample_kl(pol.model, ref_model, [r[0] for r in rows], [r[1] for r in rows], pol.tok.pad_id, s.batch_size)
    give_back_freed_memory()
    result = {
        "kind": "metrics", "policy": policy, "reference": reference, "prompts": len(texts), "samples_per_prompt": k,
        "temperature": s.temperature, "max_new_tokens": s.max_new_tokens, "kl": kl_summary(terms),
        "policy_text": _texts_summary(pol_c), "reference_text": _texts_summary(ref_c),
    }  # fmt: skip
    judged = None
    if reward_model is not None and s.winrate_temperature is not None:
        t = s.winrate_temperature
        log(f"win rate: one response per prompt from each model at T={t}")
        seed = s.seed + 10_000  # not the KL samples' seeds
        judged = []
        for g in (pol, ref):
            judged.append(g.generate(texts, n=1, max_new_tokens=s.max_new_tokens, temperature=t, seed=seed))
            give_back_freed_memory()
        result["winrate_temperature"] = t
        result["winrate_samples"] = [
            {"prompt": p, "policy": a[0].text, "reference": b[0].text} for p, a, b in zip(texts, *judged)
        ]
    if pairs:
        result["pairs"] = _pairs(pol, ref, pairs, s)
    if safety:
        log(f"safety: {len(safety)} prompts, greedy, for both models")
        result["safety"] = {name: _safety(g, safety, s) for name, g in (("policy", pol), ("reference", ref))}
    del pol, ref  # the judge below is the only model held while scoring
    gc.collect()
    give_back_freed_memory()
    if reward_model is not None:
        if isinstance(reward_model, (str, Path)):
            from alignkit.reward_model import RewardModel

            reward_model = RewardModel.load(str(reward_model), device=device)
        result["reward"] = _rewards(reward_model, prompts, pol_c, ref_c, s.batch_size, judged)
    result["samples"] = [
        {"prompt": p, "policy": [c.text for c in a], "reference": [c.text for c in b]}
        for p, a, b in zip(texts, pol_c, ref_c)
    ]
    return result


def load_pair(policy: str, reference: str, device: str) -> tuple[ReadySampler, ReadySampler]:
    """Samplers of ``policy`` and ``reference``: one model when the policy is a LoRA adapter on ``reference``
    (the reference is its base, the adapter disabled), else two. Refuses two vocabularies (KL needs one)."""
    from alignkit.models.load import resolve_model_path

    pol = load_sampler(policy, device)
    adapter = Path(resolve_model_path(policy)) / "adapter_config.json"
    base = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.is_file() else None
    if base is not None and resolve_model_path(base) == resolve_model_path(reference):
        return pol, pol.base()
    ref = load_sampler(reference, device)
    if len(pol.tok.hf) != len(ref.tok.hf):
        raise UserError(f"{policy} and {reference} have different vocabularies ({len(pol.tok.hf)} vs "
                        f"{len(ref.tok.hf)} tokens): KL needs one tokenizer. Fix: pass --reference, the model the "
                        "policy was trained from")  # fmt: skip
    return pol, ref


def _texts_summary(completions) -> dict:
    flat = [c for group in completions for c in group]
    out = text_summary([c.text for c in flat], [len(c.token_ids) for c in flat])
    out["finished_by_eos"] = float(np.mean([c.finish_reason == "eos" for c in flat])) if flat else float("nan")
    return out


def _rewards(rm, prompts: list[dict], pol_c, ref_c, batch_size: int, judged=None) -> dict:
    """Score distributions of the samples and the per-prompt win rate of the policy: the mean reward of its samples
    vs the reference's, or of the ``judged`` pair ``(policy, reference)`` of completion groups when given."""
    from alignkit.eval.samples import distribution

    def score(completions) -> np.ndarray:
        flat_p = [r["prompt"] for r, group in zip(prompts, completions) for _ in group]
        flat_t = [c.text for group in completions for c in group]
        return rm.reward(flat_p, flat_t, batch_size=batch_size)[0].numpy().reshape(len(prompts), len(completions[0]))

    a, b = score(pol_c), score(ref_c)
    wa, wb = (a, b) if judged is None else (score(judged[0]), score(judged[1]))
    wc = (pol_c, ref_c) if judged is None else judged
    length_diff = [np.mean([len(c.text) for c in x]) - np.mean([len(c.text) for c in y]) for x, y in zip(*wc)]
    wr = _win_rate(wa.mean(1), wb.mean(1), length_diff, prompts)
    return {"policy": distribution(a.ravel()), "reference": distribution(b.ravel()),
            "win_rate": dataclasses.asdict(wr)}  # fmt: skip


def judged_win_rate(rm, prompts: list[dict], responses: list[dict], batch_size: int = 16) -> dict:
    """The policy's win rate over the reference by the reward model ``rm`` on one response each per prompt:
    ``responses`` are ``run_metrics``' ``winrate_samples`` (``{"prompt", "policy", "reference"}`` texts), so a
    second judge rates exactly the answers the first one did. -> ``WinRate`` as a dict."""
    texts = [r["prompt"] for r in prompts]
    a = rm.reward(texts, [r["policy"] for r in responses], batch_size=batch_size)[0].numpy()
    b = rm.reward(texts, [r["reference"] for r in responses], batch_size=batch_size)[0].numpy()
    length_diff = [len(r["policy"]) - len(r["reference"]) for r in responses]
    return dataclasses.asdict(_win_rate(a, b, length_diff, prompts))


def _win_rate(a: np.ndarray, b: np.ndarray, length_diff: list[float], prompts: list[dict]):
    """``win_rate`` of rewards ``a`` over ``b`` ``(n,)`` per prompt, ties when equal, by category when every
    prompt has one."""
    from alignkit.eval.winrate import win_rate

    outcomes = [1.0 if x > y else 0.0 if y > x else 0.5 for x, y in zip(a, b)]
    cats = [r.get("category") for r in prompts]
    categories = [str(c) for c in cats] if all(c is not None for c in cats) else None
    return win_rate(outcomes, length_diff, categories, seed=0)


def _pairs(pol: ReadySampler, ref: ReadySampler, examples: list, s: Settings) -> dict:
    from alignkit.data import tokenize_pairs
    from alignkit.eval.pairwise import pairwise_report, score_pairs

    tokenized, _ = tokenize_pairs(examples, pol.tok, s.max_length, None)
    if not tokenized:
        raise UserError(f"no held-out pair fits in {s.max_length} tokens. Fix: raise --max-length")
    after = score_pairs(pol.model, tokenized, pol.tok.pad_id, s.batch_size)
    with ref.model.disable_adapter() if ref.adapter_off else contextlib.nullcontext():
        before = score_pairs(ref.model, tokenized, ref.tok.pad_id, s.batch_size)
    return {**pairwise_report(before, after), "length_bias": length_bias(after, before)}


def _safety(g: ReadySampler, records: list[dict], s: Settings) -> dict:
    from alignkit.eval.safety import safety_report

    completions = g.generate(
        [r["prompt"] for r in records], n=1, max_new_tokens=s.safety_tokens, temperature=0.0, seed=s.seed
    )
    texts = [group[0].text.strip() for group in completions]
    return {**safety_report(records, texts).to_dict(), "responses": texts}


def describe_metrics(r: dict) -> list[str]:
    """Human-readable lines of ``run_metrics``' result."""
    kl = r["kl"]
    lines = [
        f"{r['policy']} vs reference {r['reference']}: {r['prompts']} prompts x {r['samples_per_prompt']} samples "
        f"(T={r['temperature']}, max {r['max_new_tokens']} tokens)",
        "KL(policy || reference) on the policy's samples, nats: "
        + ", ".join(f"{k} {kl[k]['sequence']['mean']:.3f}/seq ({kl[k]['per_token']:.4f}/token)" for k in kl),
        f"  per-sequence exact KL: p10 {kl['full']['sequence']['p10']:.3f}, median {kl['full']['sequence']['p50']:.3f}"
        f", p90 {kl['full']['sequence']['p90']:.3f}, max {kl['full']['sequence']['max']:.3f}",
    ]
    for name in ("policy", "reference"):
        t = r[f"{name}_text"]
        lines.append(f"{name}: length {t['length_tokens']['mean']:.1f} tokens (median {t['length_tokens']['p50']:.0f}),"
                     f" repeated 4-grams {t['repetition_4gram']:.3f}, loops {t['loop_rate']:.3f}, distinct-1 "
                     f"{t['distinct_1']:.3f}, distinct-2 {t['distinct_2']:.3f}, ended by EOS "
                     f"{t['finished_by_eos']:.2f}")  # fmt: skip
    if "reward" in r:
        w = r["reward"]["win_rate"]
        lines.append(f"reward model: policy mean {r['reward']['policy']['mean']:+.3f} (sd "
                     f"{r['reward']['policy']['std']:.3f}), reference {r['reward']['reference']['mean']:+.3f} (sd "
                     f"{r['reward']['reference']['std']:.3f})")  # fmt: skip
        lc = w["length_controlled"]
        on = f"T={r['winrate_temperature']} responses" if "winrate_temperature" in r else "the samples"
        lines.append(f"win rate of the policy over the reference ({on}): {w['wins']}/{w['ties']}/{w['losses']} "
                     "(w/t/l), "
                     f"ties as half {w['rate']:.3f} [{w['bootstrap'][0]:.3f}, {w['bootstrap'][1]:.3f}], decisive "
                     f"{w['decisive_rate']:.3f} Wilson [{w['wilson'][0]:.3f}, {w['wilson'][1]:.3f}], "
                     f"length-controlled {'n/a' if lc is None else f'{lc:.3f}'}")  # fmt: skip
    if "pairs" in r:
        p, b = r["pairs"], r["pairs"]["length_bias"]
        lines.append(f"held-out pairs ({p['pairs']}): mean log-prob accuracy {p['mean_logp_accuracy_before']:.3f} -> "
                     f"{p['mean_logp_accuracy_after']:.3f}, implicit reward accuracy "
                     f"{p['implicit_reward_accuracy_after']:.3f}")  # fmt: skip
        lines.append(f"length bias: the implicit reward favours the longer completion in "
                     f"{b['implicit_reward_favours_longer']:.3f} of {b['pairs_differing_in_length']} pairs (chosen is "
                     f"longer in {b['chosen_is_longer']:.3f}); summed log-prob favours it "
                     f"{b['reference_favours_longer']:.3f}"
                     f" (reference) -> {b['policy_favours_longer']:.3f} (policy)")  # fmt: skip
    if "safety" in r:
        for name, sr in r["safety"].items():
            lines.append(f"safety, {name}: refuses {sr['refusal_rate_harmful']:.3f} of {sr['n_harmful']} harmful "
                         f"prompts, over-refuses {sr['over_refusal_rate_benign']:.3f} of {sr['n_benign']} "
                         "benign ones")  # fmt: skip
    return lines
