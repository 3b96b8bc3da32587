"""``alignkit compare --config F``: the spec's comparison of alignment methods from one base, on one machine.

    pairs -> SFT on the chosen responses (merged: the start of every other method)
          -> a proxy reward model on the pairs (for PPO)
          -> DPO and KTO (each pair = one desirable + one undesirable example) from SFT
          -> PPO from SFT against the proxy reward model
    judge_pairs (data no policy or proxy saw) -> a held-out judge reward model
    every policy -> ``eval.metrics_run.run_metrics`` against SFT: samples on held-out hh prompts and the project's
          helpfulness prompts (categories "hh" and "helpful"), the judge's mean reward, the win rate over SFT with
          intervals, KL to SFT, refusal rates on the safety set -> ``comparison.json`` and ``comparison.md``

Each stage's model is kept under ``output_dir`` and reused on a rerun (delete a stage's directory to redo it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.config import EMBEDDED_MODEL, _f, _require, load_config
from alignkit.errors import DataError

POLICIES = ("sft", "dpo", "kto", "ppo")


@dataclass
class CompareConfig:
    """One comparison; each method section holds config sections (lora, data, train, method, rollout) merged over
    the defaults alignkit uses for that method."""

    base: str = _f(EMBEDDED_MODEL, "The base model every method starts from.")
    pairs: str = _f("", "Preference pairs the methods train on (SFT uses their chosen responses).")
    judge_pairs: str = _f("", "Different preference pairs for the held-out judge reward model.")
    eval_prompts: str = _f("", "Held-out prompt records (pairs give their prompt), category 'hh'.")
    eval_prompt_limit: int = _f(32, "Held-out prompts used.")
    helpful_limit: int = _f(32, "Prompts of the shipped helpfulness set used (category 'helpful'); 0 = none.")
    safety_limit: int = _f(48, "Prompts of the shipped safety set (harmful and benign) used; 0 = none.")
    single_turn: bool = _f(True, "Keep only held-out prompts that are one user message.")
    methods: list = _f(list(POLICIES), "Which policies to train and compare (sft is always trained).")
    sft: dict = _f({}, "SFT sections.")
    rm: dict = _f({}, "Proxy reward model sections (PPO's reward).")
    dpo: dict = _f({}, "DPO sections.")
    kto: dict = _f({}, "KTO sections.")
    ppo: dict = _f({}, "PPO sections.")
    judge: dict = _f({}, "Judge reward model sections.")
    samples: int = _f(1, "Samples per prompt per policy (temperature 1).")
    max_new_tokens: int = _f(96, "Tokens per sample.")
    winrate_temperature: float = _f(0.0, "Win rate on one response per prompt each at this temperature (0 = greedy).")
    output_dir: str = _f("runs/compare", "Where every stage and the table go.")
    seed: int = _f(0, "Sampling seed.")

    def validate(self, where: str = "config") -> None:
        for name in ("pairs", "judge_pairs", "eval_prompts"):
            _require(bool(getattr(self, name)), where, name, getattr(self, name), "name a data file (or a slice)")
        unknown = [m for m in self.methods if m not in POLICIES]
        _require(not unknown, where, "methods", self.methods, f"use some of {', '.join(POLICIES)}")
        _require(self.pairs != self.judge_pairs, where, "judge_pairs", self.judge_pairs,
                 "train the judge on different pairs than the policies (held-out judge)")  # fmt: skip
        for name in ("eval_prompt_limit", "samples", "max_new_tokens"):
            _require(getattr(self, name) >= 1, where, name, getattr(self, name), "use at least 1")
        _require(self.winrate_temperature >= 0, where, "winrate_temperature", self.winrate_temperature,
                 "use 0 (greedy) or a positive temperature")  # fmt: skip
        for name in ("helpful_limit", "safety_limit"):
            _require(getattr(self, name) >= 0, where, name, getattr(self, name), "use 0 (none) or more")


def load_compare_config(path: str | None, overrides: list[str] = ()) -> CompareConfig:
    return load_config(CompareConfig, path, overrides)


def _merge(a: dict, b: dict) -> dict:
    out = json.loads(json.dumps(a))
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _plain(content):
    return content if isinstance(content, str) else [dict(m) for m in content]


class Stages:
    """Trains (or reuses) each stage under ``root``; ``seconds`` holds each stage's training time."""

    def __init__(self, cfg: CompareConfig, log):
        self.cfg, self.log, self.root = cfg, log, Path(cfg.output_dir)
        self.seconds: dict[str, float] = {}
        timing = self.root / "timing.json"
        self.seconds = json.loads(timing.read_text()) if timing.is_file() else {}

    def train(self, name: str, method: str, model: str, sections: dict) -> str:
        from alignkit.train import make_config, run

        out = self.root / name
        model_dir = out / "model"
        if (model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file():
            self.log(f"{name}: reusing {model_dir}")
            return str(model_dir)
        sections = _merge({"model": {"name": model}}, sections)
        sections = _merge(sections, {"train": {"output_dir": str(out), "overwrite": True}})
        self.log(f"{name}: training {method} from {model}")
        t0 = time.time()
        run(method, make_config(method, None, (), **sections), log=self.log)
        self.seconds[name] = time.time() - t0
        (self.root / "timing.json").write_text(json.dumps(self.seconds, indent=1) + "\n")
        return str(model_dir)

    def merged(self, adapter: str, name: str) -> str:
        """A full model from an adapter dir (other methods start from it); a full model dir is returned as is."""
        from alignkit.models.merge import merge_adapter

        if not (Path(adapter) / "adapter_config.json").is_file():
            return adapter
        out = self.root / name
        if not (out / "config.json").is_file():
            merge_adapter(adapter, out)
        return str(out)


def write_data(cfg: CompareConfig) -> dict[str, Path]:
    """SFT records (prompt, chosen) and KTO records (chosen: desirable, rejected: undesirable) from the pairs."""
    from alignkit.data import read_records, to_pairwise, validate_records
    from alignkit.data.feedback import write_jsonl

    root = Path(cfg.output_dir) / "data"
    examples, _ = validate_records(read_records(cfg.pairs), to_pairwise, "skip")
    if not examples:
        raise DataError(f"{cfg.pairs}: no valid preference pairs. Fix: give records with prompt/chosen/rejected")
    sft = [{"prompt": _plain(e.prompt), "completion": _plain(e.chosen)} for e in examples]
    kto = [
        {"prompt": _plain(e.prompt), "completion": _plain(c), "label": label}
        for e in examples
        for c, label in ((e.chosen, True), (e.rejected, False))
    ]
    return {"sft": write_jsonl(root / "sft.jsonl", sft), "kto": write_jsonl(root / "kto.jsonl", kto)}


def eval_prompts(cfg: CompareConfig) -> list[dict]:
    """Held-out prompts (category 'hh') and the shipped helpfulness prompts (category 'helpful')."""
    from alignkit.data import read_records, to_prompt, validate_records
    from alignkit.eval.safety import load_helpful_prompts

    rows = []
    for x in validate_records(read_records(cfg.eval_prompts), to_prompt, "skip")[0]:
        p = x.prompt
        if cfg.single_turn and not (isinstance(p, str) or (len(p) == 1 and p[0]["role"] == "user")):
            continue
        rows.append({"prompt": p if isinstance(p, str) else tuple(p), "category": "hh"})
        if len(rows) == cfg.eval_prompt_limit:
            break
    if not rows:
        raise DataError(f"{cfg.eval_prompts}: no usable prompts. Fix: give records with a (single-turn) prompt")
    helpful = load_helpful_prompts()[: cfg.helpful_limit]
    return rows + [{"prompt": r["prompt"], "category": "helpful"} for r in helpful]


def run_compare(cfg: CompareConfig, log=print) -> dict:
    """Train every stage, evaluate every policy against SFT with the held-out judge -> the comparison dict."""
    from alignkit.eval.metrics_run import Settings, run_metrics
    from alignkit.eval.safety import load_safety_prompts, subset
    from alignkit.reward import RewardModel

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stages, files = Stages(cfg, log), write_data(cfg)
    sft = stages.merged(stages.train("sft", "sft", cfg.base, _merge({"data": {"train": str(files["sft"])}}, cfg.sft)),
                        "sft-merged")  # fmt: skip
    policies = {"base": cfg.base, "sft": sft}
    if "dpo" in cfg.methods:
        policies["dpo"] = stages.train("dpo", "dpo", sft, _merge({"data": {"train": cfg.pairs}}, cfg.dpo))
    if "kto" in cfg.methods:
        policies["kto"] = stages.train("kto", "kto", sft, _merge({"data": {"train": str(files["kto"])}}, cfg.kto))
    if "ppo" in cfg.methods:
        proxy = stages.train("rm", "rm", cfg.base, _merge({"data": {"train": cfg.pairs}}, cfg.rm))
        ppo = _merge({"data": {"train": cfg.pairs}, "method": {"reward_model": proxy}}, cfg.ppo)
        policies["ppo"] = stages.train("ppo", "ppo", sft, ppo)
    judge_dir = stages.train("judge", "rm", cfg.base, _merge({"data": {"train": cfg.judge_pairs}}, cfg.judge))
    judge = RewardModel.load(judge_dir)
    prompts = eval_prompts(cfg)
    safety = subset(load_safety_prompts(), cfg.safety_limit) if cfg.safety_limit else None
    settings = Settings(samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                        winrate_temperature=cfg.winrate_temperature)  # fmt: skip
    rows = {}
    for name, model in policies.items():
        reference = cfg.base if name == "sft" else sft  # SFT is measured against the base, the rest against SFT
        log(f"evaluating {name} ({model}) against {'base' if name == 'sft' else 'sft'}")
        t0 = time.time()
        m = run_metrics(model, reference, prompts, settings, judge, None, safety, log=log)
        (root / "eval").mkdir(exist_ok=True)
        (root / "eval" / f"metrics-{name}.json").write_text(json.dumps(m, indent=1, default=str) + "\n")
        rows[name] = _row(name, m, stages.seconds.get(name), time.time() - t0)
    result = {"kind": "comparison", "base": cfg.base, "pairs": cfg.pairs, "judge": judge_dir,
              "judge_pairs": cfg.judge_pairs, "prompts": len(prompts), "winrate_temperature": cfg.winrate_temperature,
              "rows": rows}  # fmt: skip
    (root / "comparison.json").write_text(json.dumps(result, indent=1, default=_nan_null) + "\n")
    (root / "comparison.md").write_text("\n".join(comparison_table(result)) + "\n")
    return result


def _nan_null(x):
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


def _row(name: str, m: dict, train_seconds: float | None, eval_seconds: float) -> dict:
    w = m["reward"]["win_rate"]
    row = {
        "vs": "base" if name == "sft" else "sft",
        "win_rate": w["rate"], "win_rate_interval": w["bootstrap"], "decisive": w["decisive_rate"],
        "wilson": w["wilson"], "length_controlled": w["length_controlled"],
        "win_rate_hh": (w["per_category"].get("hh") or {}).get("rate"),
        "win_rate_helpful": (w["per_category"].get("helpful") or {}).get("rate"),
        "reward": m["reward"]["policy"]["mean"], "reward_reference": m["reward"]["reference"]["mean"],
        "kl": m["kl"]["full"]["sequence"]["mean"], "kl_k3": m["kl"]["k3"]["sequence"]["mean"],
        "length": m["policy_text"]["length_tokens"]["mean"], "loops": m["policy_text"]["loop_rate"],
        "train_seconds": train_seconds, "eval_seconds": eval_seconds,
    }  # fmt: skip
    if "safety" in m:
        row["refusal_harmful"] = m["safety"]["policy"]["refusal_rate_harmful"]
        row["over_refusal_benign"] = m["safety"]["policy"]["over_refusal_rate_benign"]
    return row


def comparison_table(result: dict) -> list[str]:
    """The spec's comparison table in Markdown."""

    def f(v, spec=".3f"):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    t = result.get("winrate_temperature")
    judged_on = "the T=1 samples" if t is None else f"one response per prompt at T={t}"
    lines = [
        f"Base {result['base']}; policies trained on {result['pairs']}; judge: a reward model trained on "
        f"{result['judge_pairs']} (no policy or proxy saw these pairs); {result['prompts']} prompts; win rates on "
        f"{judged_on}; KL on T=1 samples.",
        "",
        "| policy | win rate vs (ties half) [95% bootstrap] | decisive [Wilson] | LC | hh | helpful | judge reward "
        "| KL (nats/seq) | length | loops | refuses harmful | refuses benign | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        lo, hi = r["win_rate_interval"]
        wl, wh = r["wilson"]
        lines.append(
            f"| {name} | {f(r['win_rate'])} vs {r['vs']} [{f(lo)}, {f(hi)}] | {f(r['decisive'])} [{f(wl)}, {f(wh)}] "
            f"| {f(r['length_controlled'])} | {f(r['win_rate_hh'])} | {f(r['win_rate_helpful'])} | "
            f"{f(r['reward'], '+.3f')} | {f(r['kl'])} | {f(r['length'], '.1f')} | {f(r['loops'], '.2f')} | "
            f"{f(r.get('refusal_harmful'), '.2f')} | {f(r.get('over_refusal_benign'), '.2f')} | "
            f"{f(r['train_seconds'], '.0f')} |"
        )
    return lines
