"""The overoptimization lab (Gao et al. 2023 at laptop scale), ``alignkit eval overopt --config F``:

    preference pairs -> gold reward model (given, or trained on all of ``pairs``)
      -> gold relabels ``relabel`` pairs (optionally with label noise, as Coste et al. 2024)
      -> proxy reward models trained on the first k relabeled pairs, for each k in ``proxy_sizes``
      -> a pool of ``pool`` samples per prompt from the policy, scored by gold and every proxy
      -> best-of-n for n in ``ns`` under each proxy (unbiased estimator), at KL = log n - (n-1)/n
      -> RL / DPO checkpoints, each sampled and scored at its measured KL
      -> the fitted forms, gold's peak, the proxy's overstatement there, conservative scoring -> overopt.json + plot

Rewards are put in one unit: each reward model's scores are standardized by the mean and std of its scores on the
whole pool (the initial policy's samples), so every curve starts at 0 for n = 1 and reads in standard deviations of
the initial policy's reward. Trained reward models are kept under ``output_dir`` and reused on a rerun.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignkit.config import EMBEDDED_MODEL, load_config, require, setting
from alignkit.eval.overopt import (
    CONSERVATIVE,
    conservative_scores,
    fit_form,
    overstatement_at,
    pool_best_of_n_kl,
    unbiased_best_of_n,
)
from alignkit.outputs import own_output_dir, write_text_atomic
from alignkit.reward_model.best_of_n import best_of_n_kl


@dataclass
class OveroptConfig:
    """One overoptimization study; every field can be set in YAML or with ``--set field=value``."""

    policy: str = setting(EMBEDDED_MODEL, "The initial policy sampled for best-of-n (and the checkpoints' reference).")
    pairs: str = setting("", "Preference pairs (human labels) the gold reward model trains on when gold is not given.")
    gold: str | None = setting(None, "A trained gold reward model dir; None = train one on pairs (kept in output_dir).")
    relabel: str = setting("", "Pairs the gold relabels for the proxies ('' = pairs).")
    proxy_sizes: list = setting([100, 300, 1000], "Relabeled pairs each proxy reward model trains on.")
    proxy_eval_pairs: int = setting(200, "Relabeled pairs held out (from the end) to measure proxy-gold agreement.")
    proxy_heads: int = setting(1, "Heads per proxy; > 1 = a bootstrap ensemble, enabling conservative scoring.")
    label_noise: float = setting(0.0, "Share of relabeled pairs whose gold label is flipped (Coste et al. 2024).")
    rm: dict = setting({}, "Reward-model training sections (lora, data, train, method) for gold and proxies.")
    prompts: str = setting("", "Prompt records (a prompt field, or pairs whose prompt is used).")
    prompt_limit: int = setting(40, "Prompts in the best-of-n pool.")
    single_turn: bool = setting(True, "Keep only prompts that are one user message.")
    pool: int = setting(64, "Samples per prompt in the pool (the largest n is at most this).")
    ns: list = setting([1, 2, 4, 8, 16, 32, 64], "Best-of-n values.")
    max_new_tokens: int = setting(48, "Tokens per sample.")
    temperature: float = setting(1.0, "Sampling temperature of the pool (1 = the policy itself).")
    checkpoints: list = setting([], "RL/DPO checkpoints: [{label: ..., model: DIR}], each scored at its measured KL.")
    checkpoint_samples: int = setting(4, "Samples per prompt from each checkpoint.")
    coefficient: float = setting(
        1.0, "lambda of mean - lambda*var and alpha of mean - alpha*std (conservative scoring)."
    )
    output_dir: str = setting("runs/overopt", "Where reward models, samples, overopt.json and the plot go.")
    overwrite: bool = setting(False, "Write into an output_dir that overopt did not make (its runs are replaced).")
    batch_size: int = setting(16, "Reward-model scoring batch size.")
    seed: int = setting(0, "Seed of sampling and label noise.")

    def validate(self, where: str = "config") -> None:
        require(bool(self.pairs) or bool(self.gold), where, "pairs", self.pairs, "name preference pairs or a gold")
        require(bool(self.prompts), where, "prompts", self.prompts, "name prompt records, e.g. a pairs file slice")
        require(bool(self.proxy_sizes) and all(isinstance(k, int) and k > 0 for k in self.proxy_sizes), where,
                "proxy_sizes", self.proxy_sizes, "use positive pair counts, e.g. [100, 300, 1000]")  # fmt: skip
        require(self.pool >= 1, where, "pool", self.pool, "sample at least 1 completion per prompt")
        require(bool(self.ns) and all(isinstance(n, int) and 1 <= n <= self.pool for n in self.ns), where, "ns",
                self.ns, f"use values between 1 and pool ({self.pool})")  # fmt: skip
        require(0 <= self.label_noise < 0.5, where, "label_noise", self.label_noise, "use a share in [0, 0.5)")
        require(self.temperature > 0, where, "temperature", self.temperature, "sample with a temperature > 0")
        require(self.proxy_heads >= 1, where, "proxy_heads", self.proxy_heads, "use 1 or more heads")
        require(self.prompt_limit >= 1, where, "prompt_limit", self.prompt_limit, "use at least 1 prompt")
        for i, c in enumerate(self.checkpoints):
            ok = isinstance(c, dict) and isinstance(c.get("model"), str) and set(c) <= {"label", "model"}
            require(ok, where, f"checkpoints[{i}]", c, "give {label: NAME, model: DIR}")
        if not self.relabel:
            self.relabel = self.pairs


def load_overopt_config(path: str | None, overrides: list[str] = ()) -> OveroptConfig:
    return load_config(OveroptConfig, path, overrides)


def _train_rm(cfg: OveroptConfig, out: Path, train: str, eval_: str | None, heads: int, log) -> Path:
    """Train (or reuse) a reward model in ``out``; returns its model dir."""
    from alignkit.train import make_config, run

    model_dir = out / "model"
    if (model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file():
        log(f"reusing {model_dir}")
        return model_dir
    sections = json.loads(json.dumps(cfg.rm))  # a copy
    sections.setdefault("data", {}).update({"train": train, "eval": eval_})
    sections.setdefault("train", {}).update({"output_dir": str(out), "overwrite": True})
    if heads > 1:
        sections.setdefault("method", {}).update({"heads": heads, "bootstrap": True})
    run("rm", make_config("rm", None, (), **sections), log=log)
    return model_dir


def relabel_pairs(gold, examples: list, noise: float, seed: int, batch_size: int) -> tuple[list[dict], float]:
    """Pairs ordered by the gold reward (chosen = the one gold prefers), a share ``noise`` flipped at random ->
    (records, agreement of gold with the original labels)."""
    prompts = [e.prompt for e in examples]
    a = gold.reward(prompts, [e.chosen for e in examples], batch_size=batch_size)[0].tolist()
    b = gold.reward(prompts, [e.rejected for e in examples], batch_size=batch_size)[0].tolist()
    rng = random.Random(seed)
    records = []
    for e, ra, rb in zip(examples, a, b):
        keep = ra >= rb
        if rng.random() < noise:
            keep = not keep
        chosen, rejected = (e.chosen, e.rejected) if keep else (e.rejected, e.chosen)
        records.append({"prompt": _plain(e.prompt), "chosen": _plain(chosen), "rejected": _plain(rejected),
                        "source": e.source})  # fmt: skip
    agreement = float(np.mean([ra > rb for ra, rb in zip(a, b)])) if a else math.nan
    return records, agreement


def _plain(content):
    return content if isinstance(content, str) else [dict(m) for m in content]


def _prompts(cfg: OveroptConfig) -> list:
    from alignkit.data import read_records

    out = []
    for _, record in read_records(cfg.prompts):
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if prompt is None and isinstance(record, dict) and "chosen" in record:
            from alignkit.data.formats import to_pairwise

            prompt = to_pairwise(record, "").prompt
        if prompt is None:
            continue
        if cfg.single_turn and not (isinstance(prompt, str) or (len(prompt) == 1 and prompt[0]["role"] == "user")):
            continue
        out.append(prompt if isinstance(prompt, str) else tuple(prompt))
        if len(out) == cfg.prompt_limit:
            break
    if not out:
        from alignkit.errors import DataError

        raise DataError(f"{cfg.prompts}: no usable prompts. Fix: give records with a prompt (single-turn when "
                        "single_turn is true)")  # fmt: skip
    return out


def _sample(model_name: str, prompts: list, n: int, cfg: OveroptConfig, seed: int):
    """``n`` samples per prompt from a model -> (model, sampler, completions per prompt)."""
    from alignkit.generation import load_sampler

    g = load_sampler(model_name, "auto")
    return (
        g.model,
        g.sampler,
        g.generate(list(prompts), n=n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed),
    )


def _score(rm, prompts: list, texts: list[list[str]], batch_size: int) -> np.ndarray:
    """``(prompts, samples, heads)`` normalized rewards of every sample."""
    flat_p = [p for p, group in zip(prompts, texts) for _ in group]
    flat_t = [t for group in texts for t in group]
    scores = rm.score(flat_p, flat_t, batch_size=batch_size).numpy()
    return scores.reshape(len(prompts), len(texts[0]), -1)


def run_overopt(cfg: OveroptConfig, log=print) -> dict:
    """Run the study; writes ``overopt.json`` (kind "overopt"), ``overopt.png`` and ``samples.jsonl``."""
    from alignkit.data import read_records, to_pairwise, validate_records
    from alignkit.data.jsonl import write_jsonl
    from alignkit.reward_model import RewardModel

    out = own_output_dir(cfg.output_dir, "overopt", overwrite=cfg.overwrite, option="output_dir")
    gold_dir = Path(cfg.gold) if cfg.gold else _train_rm(cfg, out / "gold", cfg.pairs, None, 1, log)
    gold = RewardModel.load(gold_dir)
    examples, _ = validate_records(read_records(cfg.relabel), to_pairwise, "skip")
    need = max(cfg.proxy_sizes) + cfg.proxy_eval_pairs
    if len(examples) < need:
        from alignkit.errors import ConfigError

        raise ConfigError(f"relabel {cfg.relabel}: {len(examples)} valid pairs, but the largest proxy "
                          f"({max(cfg.proxy_sizes)}) plus proxy_eval_pairs ({cfg.proxy_eval_pairs}) need {need}. "
                          "Fix: lower proxy_sizes or proxy_eval_pairs, or give more pairs")  # fmt: skip
    log(f"gold {gold_dir} relabels {len(examples)} pairs (label noise {cfg.label_noise})")
    relabeled, agreement = relabel_pairs(gold, examples, cfg.label_noise, cfg.seed, cfg.batch_size)
    log(f"gold agrees with the original labels on {agreement:.3f} of them")
    train_file = write_jsonl(out / "relabeled_train.jsonl", relabeled[: len(relabeled) - cfg.proxy_eval_pairs])
    eval_file = write_jsonl(out / "relabeled_eval.jsonl", relabeled[len(relabeled) - cfg.proxy_eval_pairs :])
    proxies = {}
    for k in cfg.proxy_sizes:
        proxies[f"proxy-{k}"] = _train_rm(
            cfg, out / f"proxy-{k}", f"{train_file}[:{k}]", str(eval_file) if cfg.proxy_eval_pairs else None,
            cfg.proxy_heads, log,
        )  # fmt: skip

    prompts = _prompts(cfg)
    log(f"sampling a pool of {cfg.pool} per prompt for {len(prompts)} prompts from {cfg.policy}")
    policy, sampler, pool = _sample(cfg.policy, prompts, cfg.pool, cfg, cfg.seed)
    texts = [[c.text for c in group] for group in pool]
    raw = {"gold": _score(gold, prompts, texts, cfg.batch_size)}
    for name, d in proxies.items():
        raw[name] = _score(RewardModel.load(d), prompts, texts, cfg.batch_size)
    stats = {name: (float(r.mean()), float(r.std()) or 1.0) for name, r in raw.items()}  # per-model standardization
    z = {name: (r - stats[name][0]) / stats[name][1] for name, r in raw.items()}  # (P, m, heads)
    write_jsonl(out / "samples.jsonl", [
        {"prompt": _plain(p), "samples": [{"text": t, **{name: z[name][i, j].tolist() for name in z}}
                                           for j, t in enumerate(group)]}
        for i, (p, group) in enumerate(zip(prompts, texts))
    ])  # fmt: skip

    gold_z = z["gold"].mean(-1)  # (P, m)
    points, fits, scoring, overstatement = [], {}, {}, {}
    selections = {"gold (oracle)": gold_z, **{name: z[name].mean(-1) for name in proxies}}
    for name, select in selections.items():
        for n in cfg.ns:
            g = float(np.mean([unbiased_best_of_n(select[i], gold_z[i], n) for i in range(len(prompts))]))
            own = float(np.mean([unbiased_best_of_n(select[i], select[i], n) for i in range(len(prompts))]))
            kl = best_of_n_kl(n)
            points.append({"method": "bon", "label": f"{name} bon-{n}", "selector": name, "n": n, "kl": kl,
                           "kl_sampled": pool_best_of_n_kl(cfg.pool, n), "d": math.sqrt(kl), "gold": g,
                           "proxy": {} if name.startswith("gold") else {name: own}})  # fmt: skip
        mine = [p for p in points if p["selector"] == name]
        fits[f"gold_bon/{name}"] = fit_form([p["d"] for p in mine], [p["gold"] for p in mine], "bon")
        if not name.startswith("gold"):
            fits[f"proxy_bon/{name}"] = fit_form([p["d"] for p in mine], [p["proxy"][name] for p in mine], "bon")
            d_max = max(p["d"] for p in mine)
            overstatement[name] = overstatement_at(fits[f"proxy_bon/{name}"], fits[f"gold_bon/{name}"], d_max)
            if overstatement[name] is not None:  # and measured, without a fit: the gap at the largest n
                overstatement[name]["gap_at_max_n"] = mine[-1]["proxy"][name] - mine[-1]["gold"]
        if not name.startswith("gold") and cfg.proxy_heads > 1:
            members = z[name]  # (P, m, heads)
            scoring[name] = {how: [float(np.mean([unbiased_best_of_n(
                conservative_scores(members[i], how, cfg.coefficient), gold_z[i], n) for i in range(len(prompts))]))
                for n in cfg.ns] for how in CONSERVATIVE}  # fmt: skip
    del policy, sampler
    points += _checkpoint_points(cfg, prompts, gold, proxies, stats, log)
    rl = [p for p in points if p["method"] == "rl"]
    if rl:
        fits["gold_rl"] = fit_form([p["d"] for p in rl], [p["gold"] for p in rl], "rl")
        for name in proxies:
            fits[f"{name}_rl"] = fit_form([p["d"] for p in rl], [p["proxy"][name] for p in rl], "rl")
    result = {
        "kind": "overopt", "policy": cfg.policy, "gold": str(gold_dir), "prompts": len(prompts), "pool": cfg.pool,
        "ns": cfg.ns, "label_noise": cfg.label_noise, "gold_agreement_with_labels": agreement,
        "proxy_agreement_with_gold": _proxy_agreement(out, proxies), "standardization": stats,
        "points": points, "fits": {k: v for k, v in fits.items() if v is not None}, "overstatement": overstatement,
        "scoring": scoring, "coefficient": cfg.coefficient,
    }  # fmt: skip
    write_text_atomic(out / "overopt.json", json.dumps(result, indent=1, default=_json_default) + "\n")
    from alignkit.eval.report.figures import plot_overopt

    plot_overopt(result, out / "overopt.png")
    return result


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(type(x))


def _proxy_agreement(out: Path, proxies: dict) -> dict:
    """Held-out accuracy of each proxy on gold-labeled pairs, read from its training run's metrics."""
    from alignkit.data.jsonl import read_jsonl

    agreement = {}
    for name, model_dir in proxies.items():
        metrics = Path(model_dir).parent / "metrics.jsonl"
        rows = [r for r in read_jsonl(metrics) if "eval/rewards/accuracies" in r] if metrics.is_file() else []
        agreement[name] = rows[-1]["eval/rewards/accuracies"] if rows else None
    return agreement


def _checkpoint_points(cfg: OveroptConfig, prompts: list, gold, proxies: dict, stats: dict, log) -> list[dict]:
    """Each checkpoint: samples -> KL to the initial policy (exact next-token KL summed per sequence) -> rewards."""
    if not cfg.checkpoints:
        return []
    import torch

    from alignkit.eval.samples import kl_summary, sample_kl
    from alignkit.models import load_model, pick_device
    from alignkit.reward_model import RewardModel

    reference = load_model(cfg.policy, torch.float32, pick_device("auto"))
    models = {"gold": gold, **{name: RewardModel.load(d) for name, d in proxies.items()}}
    points = []
    for c in cfg.checkpoints:
        label = c.get("label") or Path(c["model"]).name
        lm, sampler, completions = _sample(c["model"], prompts, cfg.checkpoint_samples, cfg, cfg.seed + 1)
        rows = [(sampler.prompt_ids(p), x.token_ids) for p, group in zip(prompts, completions) for x in group]
        terms = sample_kl(lm, reference, [r[0] for r in rows], [r[1] for r in rows], sampler.tok.pad_id)
        kl = max(kl_summary(terms)["full"]["sequence"]["mean"], 0.0)
        texts = [[x.text for x in group] for group in completions]
        values = {n: float(((_score(m, prompts, texts, cfg.batch_size) - stats[n][0]) / stats[n][1]).mean())
                  for n, m in models.items()}  # fmt: skip
        log(f"checkpoint {label}: KL {kl:.3f}, gold {values['gold']:+.3f}")
        points.append({"method": "rl", "label": label, "n": None, "kl": kl, "d": math.sqrt(kl), "gold": values["gold"],
                       "proxy": {n: v for n, v in values.items() if n != "gold"}})  # fmt: skip
        del lm, sampler
    return points


def describe_overopt(result: dict) -> list[str]:
    """Human-readable lines: per selector, gold and proxy at each n, the fits, gold's peak and the overstatement."""
    lines = [f"{result['prompts']} prompts x pool {result['pool']}; rewards in std of the initial policy's reward; "
             f"gold agrees with the original labels on {result['gold_agreement_with_labels']:.3f}"]  # fmt: skip
    for name, acc in result["proxy_agreement_with_gold"].items():
        lines.append(f"{name}: held-out agreement with gold {acc:.3f}" if acc is not None else f"{name}: no eval")
    selectors = list(dict.fromkeys(p["selector"] for p in result["points"] if p["method"] == "bon"))
    lines.append("n:            " + " ".join(f"{n:>6}" for n in result["ns"]))
    for name in selectors:
        mine = [p for p in result["points"] if p.get("selector") == name]
        lines.append(f"gold | {name:<14}" + " ".join(f"{p['gold']:+6.2f}" for p in mine))
        if mine and mine[0]["proxy"]:
            lines.append("  proxy itself     " + " ".join(f"{p['proxy'][name]:+6.2f}" for p in mine))
    for key, fit in result["fits"].items():
        lines.append(f"{key}: alpha {fit['alpha']:.3f} +- {fit['alpha_se']:.3f}, beta {fit['beta']:.3f} "
                         f"+- {fit['beta_se']:.3f}, peak at d {fit['d_peak']:.2f} "
                         f"(reward {fit['reward_peak']:+.2f})")  # fmt: skip
    for name, over in result["overstatement"].items():
        if over is not None:
            where = "gold's peak" if over["gold_peaked"] else "the largest d (gold did not peak in range)"
            gap = over["gap_at_max_n"]
            lines.append(f"{name}: the fitted proxy overstates gold by {over['value']:+.2f} at {where}, d "
                         f"{over['d']:.2f}; measured gap at n = {result['ns'][-1]}: {gap:+.2f}")  # fmt: skip
    for name, by in result["scoring"].items():
        lines.append(f"conservative scoring of {name} (gold at n = {result['ns'][-1]}): "
                     + ", ".join(f"{how} {vals[-1]:+.2f}" for how, vals in by.items()))  # fmt: skip
    for p in result["points"]:
        if p["method"] == "rl":
            lines.append(f"checkpoint {p['label']}: KL {p['kl']:.2f}, gold {p['gold']:+.2f}, "
                         + ", ".join(f"{k} {v:+.2f}" for k, v in p["proxy"].items()))  # fmt: skip
    return lines
