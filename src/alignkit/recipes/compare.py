"""``alignkit compare --config F``: the spec's comparison of alignment methods from one base, on one machine.

    pairs -> SFT on the chosen responses (merged: the start of every other method)
          -> a proxy reward model on the pairs (for PPO)
          -> DPO and KTO (each pair = one desirable + one undesirable example) from SFT
          -> PPO from SFT against the proxy reward model
    judge_pairs (data no policy or proxy saw) -> a held-out judge reward model
    every policy -> ``eval.policy.run_metrics`` against SFT: samples on held-out hh prompts and the project's
          helpfulness prompts (categories "hh" and "helpful"), the judge's mean reward, the win rate over SFT with
          intervals, KL to SFT, refusal rates on the safety set -> ``comparison.json`` and ``comparison.md``

Each stage's model is kept under ``output_dir`` and reused on a rerun while its sections and the stage it starts from
are unchanged (``stage.json`` holds their key); a changed stage is redone, with every stage built on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.config import EMBEDDED_MODEL, load_config, require, setting
from alignkit.errors import DataError
from alignkit.outputs import own_output_dir, write_text_atomic

POLICIES = ("sft", "dpo", "kto", "ppo")


@dataclass
class CompareConfig:
    """One comparison; each method section holds config sections (lora, data, train, method, rollout) merged over
    the defaults alignkit uses for that method."""

    base: str = setting(EMBEDDED_MODEL, "The base model every method starts from.")
    pairs: str = setting("", "Preference pairs the methods train on (SFT uses their chosen responses).")
    judge_pairs: str = setting("", "Different preference pairs for the held-out judge reward model.")
    sanity_pairs: str = setting(
        "builtin:demo_prefs_heldout.jsonl",
        "Clear-cut pairs the judge and PPO's proxy are checked on (their agreement is reported); '' = none.",
    )
    eval_prompts: str = setting("", "Held-out prompt records (pairs give their prompt), category 'hh'.")
    eval_prompt_limit: int = setting(32, "Held-out prompts used.")
    helpful_limit: int = setting(32, "Prompts of the shipped helpfulness set used (category 'helpful'); 0 = none.")
    safety_limit: int = setting(48, "Prompts of the shipped safety set (harmful and benign) used; 0 = none.")
    single_turn: bool = setting(True, "Keep only held-out prompts that are one user message.")
    methods: list = setting(list(POLICIES), "Which policies to train and compare (sft is always trained).")
    sft: dict = setting({}, "SFT sections.")
    rm: dict = setting({}, "Proxy reward model sections (PPO's reward).")
    dpo: dict = setting({}, "DPO sections.")
    kto: dict = setting({}, "KTO sections.")
    ppo: dict = setting({}, "PPO sections.")
    judge: dict = setting({}, "Judge reward model sections.")
    samples: int = setting(1, "Samples per prompt per policy (temperature 1).")
    max_new_tokens: int = setting(96, "Tokens per sample.")
    winrate_temperature: float = setting(
        0.0, "Win rate on one response per prompt each at this temperature (0 = greedy)."
    )
    output_dir: str = setting("runs/compare", "Where every stage and the table go.")
    overwrite: bool = setting(False, "Write into an output_dir that compare did not make (its runs are replaced).")
    seed: int = setting(0, "Sampling seed.")

    def validate(self, where: str = "config") -> None:
        for name in ("pairs", "judge_pairs", "eval_prompts"):
            require(bool(getattr(self, name)), where, name, getattr(self, name), "name a data file (or a slice)")
        unknown = [m for m in self.methods if m not in POLICIES]
        require(not unknown, where, "methods", self.methods, f"use some of {', '.join(POLICIES)}")
        require(self.pairs != self.judge_pairs, where, "judge_pairs", self.judge_pairs,
                "train the judge on different pairs than the policies (held-out judge)")  # fmt: skip
        for name in ("eval_prompt_limit", "samples", "max_new_tokens"):
            require(getattr(self, name) >= 1, where, name, getattr(self, name), "use at least 1")
        require(self.winrate_temperature >= 0, where, "winrate_temperature", self.winrate_temperature,
                "use 0 (greedy) or a positive temperature")  # fmt: skip
        for name in ("helpful_limit", "safety_limit"):
            require(getattr(self, name) >= 0, where, name, getattr(self, name), "use 0 (none) or more")


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
        self.keys: dict[str, str] = {}  # model path -> the key of the stage that made it
        timing = self.root / "timing.json"
        self.seconds = json.loads(timing.read_text()) if timing.is_file() else {}

    def train(self, name: str, method: str, model: str, sections: dict) -> str:
        from alignkit.train import make_config, run

        out = self.root / name
        model_dir = out / "model"
        sections = _merge({"model": {"name": model}}, sections)
        sections = _merge(sections, {"train": {"output_dir": str(out), "overwrite": True}})
        key = self._key(method, sections, model)
        if self._reusable(name, out, key, (model_dir / "config.json", model_dir / "adapter_config.json")):
            return self._done(str(model_dir), key)
        self.log(f"{name}: training {method} from {model}")
        t0 = time.time()
        run(method, make_config(method, None, (), **sections), log=self.log)
        self.seconds[name] = time.time() - t0
        (self.root / "timing.json").write_text(json.dumps(self.seconds, indent=1) + "\n")
        (out / "stage.json").write_text(json.dumps({"key": key, "method": method, "sections": sections}) + "\n")
        return self._done(str(model_dir), key)

    def merged(self, adapter: str, name: str) -> str:
        """A full model from an adapter dir (other methods start from it); a full model dir is returned as is."""
        from alignkit.models.merge import merge_adapter

        if not (Path(adapter) / "adapter_config.json").is_file():
            return adapter
        out, key = self.root / name, self._key("merge", {}, adapter)
        if not self._reusable(name, out, key, (out / "config.json",)):
            shutil.rmtree(out, ignore_errors=True)
            merge_adapter(adapter, out)
            (out / "stage.json").write_text(json.dumps({"key": key, "method": "merge", "adapter": adapter}) + "\n")
        return self._done(str(out), key)

    def _key(self, method: str, sections: dict, model: str) -> str:
        """A stage's identity: its method, its sections and the identity of the stage it starts from (so a changed
        SFT retrains everything built on it); a section naming another stage's model (PPO's proxy reward model) counts
        that stage's identity too, so a retrained proxy retrains PPO."""

        def ids(v):
            if isinstance(v, dict):
                return {k: ids(x) for k, x in v.items()}
            return self.keys.get(v, v) if isinstance(v, str) else v

        what = {"method": method, "sections": ids(sections), "upstream": self.keys.get(model, model)}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _reusable(self, name: str, out: Path, key: str, made: tuple[Path, ...]) -> bool:
        if not any(p.is_file() for p in made):
            return False
        info = out / "stage.json"
        saved = json.loads(info.read_text()).get("key") if info.is_file() else None
        if saved != key:
            self.log(f"{name}: its config or its starting model changed since {out} was trained; redoing it")
            return False
        self.log(f"{name}: reusing {out}")
        return True

    def _done(self, path: str, key: str) -> str:
        self.keys[path] = key
        return path


def write_data(cfg: CompareConfig) -> dict[str, Path]:
    """SFT records (prompt, chosen) and KTO records (chosen: desirable, rejected: undesirable) from the pairs."""
    from alignkit.data import read_records, to_pairwise, validate_records
    from alignkit.data.jsonl import write_jsonl

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
    from alignkit.eval.policy import Settings, run_metrics
    from alignkit.eval.safety import load_safety_prompts, subset
    from alignkit.reward_model import RewardModel
    from alignkit.reward_model.scoring import pair_agreement

    root = own_output_dir(cfg.output_dir, "compare", overwrite=cfg.overwrite, inputs=[cfg.base], option="output_dir")
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
    sanity = {}
    if cfg.sanity_pairs:  # is the judge (and the proxy PPO optimizes) sensible where a reader decides at once?
        sanity = {"judge": pair_agreement(judge, cfg.sanity_pairs)}
        if "ppo" in cfg.methods:
            sanity["proxy"] = pair_agreement(RewardModel.load(proxy), cfg.sanity_pairs)
        log(f"agreement on {cfg.sanity_pairs}: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in sanity.items()))
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
        rows[name] |= training_health(root / name / "metrics.jsonl")
    result = {"kind": "comparison", "base": cfg.base, "pairs": cfg.pairs, "judge": judge_dir,
              "judge_pairs": cfg.judge_pairs, "prompts": len(prompts), "winrate_temperature": cfg.winrate_temperature,
              "sanity_pairs": cfg.sanity_pairs, "sanity": sanity, "rows": rows}  # fmt: skip
    write_text_atomic(root / "comparison.json", json.dumps(result, indent=1, default=_nan_null) + "\n")
    write_text_atomic(root / "comparison.md", "\n".join(comparison_table(result)) + "\n")
    return result


def _nan_null(x):
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


def training_health(metrics_file: Path) -> dict:
    """What the PPO health monitor said during training, from a stage's ``metrics.jsonl`` -> {"alarm_steps": logged
    steps with any alarm, "alarms": {check: steps flagged}, "train_kl_max": the largest logged ``kl/sequence``};
    {} for a stage that logs no health metrics (SFT, DPO, KTO) or was not trained here."""
    if not metrics_file.is_file():
        return {}
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "health/alarms" in r]
    if not rows:
        return {}
    checks = sorted({k for r in rows for k in r if k.startswith("health/") and k != "health/alarms"})
    kls = [r["kl/sequence"] for r in rows if isinstance(r.get("kl/sequence"), (int, float))]
    return {
        "alarm_steps": sum(r["health/alarms"] > 0 for r in rows), "logged_steps": len(rows),
        "alarms": {c.removeprefix("health/"): n for c in checks if (n := sum(r.get(c, 0) > 0 for r in rows))},
        "train_kl_max": max(kls) if kls else None,
    }  # fmt: skip


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


def _alarms(r: dict) -> str:
    """'0 of 16 steps' / '2 of 16 steps (kl_high 2)' for a monitored (RL) stage, '-' for the others."""
    if "alarm_steps" not in r:
        return "-"
    which = ", ".join(f"{k} {n}" for k, n in r["alarms"].items())
    return f"{r['alarm_steps']} of {r['logged_steps']} steps" + (f" ({which})" if which else "")


def _sanity_line(result: dict) -> str:
    """' Agreement with the clear-cut pairs X: judge 0.92 (helpfulness 0.90, ...); proxy 0.61 (...).' or ''."""
    sanity = result.get("sanity") or {}
    if not sanity:
        return ""
    parts = [f"{who} {s['accuracy']:.3f} (" + ", ".join(f"{c} {a:.2f}" for c, a in s["per_category"].items()) + ")"
             for who, s in sanity.items()]  # fmt: skip
    return (
        f" Agreement with the clear-cut pairs {result['sanity_pairs']} (chosen scored above rejected; below "
        f"{SANITY_BAR} the judge's verdicts are not evidence): " + "; ".join(parts) + "."
    )


SANITY_BAR = 0.8  # agreement with the clear-cut pairs below which a reward model's verdicts are not evidence


def evidence(name: str, result: dict) -> str:
    """Whether row ``name``'s win rate is evidence: "yes", "unchecked" (no sanity pairs), or "NO: ..." naming the
    reward model under the bar (the judge for every row; PPO's proxy too, since PPO optimized it)."""
    sanity = result.get("sanity") or {}
    if not sanity:
        return "unchecked"
    who = ["judge"] + (["proxy"] if name == "ppo" else [])
    weak = [f"{w} {sanity[w]['accuracy']:.2f}" for w in who if w in sanity and sanity[w]["accuracy"] < SANITY_BAR]
    return "yes" if not weak else f"NO: {', '.join(weak)} < {SANITY_BAR:.2f}"


def comparison_table(result: dict) -> list[str]:
    """The spec's comparison table in Markdown; a last column says which rows' win rates are evidence."""

    def f(v, spec=".3f"):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    t = result.get("winrate_temperature")
    judged_on = "the T=1 samples" if t is None else f"one response per prompt at T={t}"
    lines = [
        f"Base {result['base']}; policies trained on {result['pairs']}; judge: a reward model trained on "
        f"{result['judge_pairs']} (no policy or proxy saw these pairs); {result['prompts']} prompts; win rates on "
        f"{judged_on}; KL to the row's reference (the vs column) on T=1 samples; health alarms: steps on which the PPO "
        "health monitor flagged anything during training." + _sanity_line(result),
        "",
        "| policy | win rate vs (ties half) [95% bootstrap] | decisive [Wilson] | LC | hh | helpful | judge reward "
        "| KL (nats/seq) | length | loops | refuses harmful | refuses benign | train s | health alarms | evidence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows_not = [n for n in result["rows"] if evidence(n, result).startswith("NO")]
    if rows_not:
        lines[0:0] = [f"**Not evidence: the win rates of {', '.join(rows_not)}.** Their judge (or, for PPO, the proxy "
                      f"it optimized) agrees with fewer than {SANITY_BAR:.0%} of the clear-cut pairs, so a win or a "
                      "loss says little about the policy; KL, length, loops and refusals are measured without a "
                      "judge and stand.", ""]  # fmt: skip
    for name, r in result["rows"].items():
        lo, hi = r["win_rate_interval"]
        wl, wh = r["wilson"]
        lines.append(
            f"| {name} | {f(r['win_rate'])} vs {r['vs']} [{f(lo)}, {f(hi)}] | {f(r['decisive'])} [{f(wl)}, {f(wh)}] "
            f"| {f(r['length_controlled'])} | {f(r['win_rate_hh'])} | {f(r['win_rate_helpful'])} | "
            f"{f(r['reward'], '+.3f')} | {f(r['kl'])} | {f(r['length'], '.1f')} | {f(r['loops'], '.2f')} | "
            f"{f(r.get('refusal_harmful'), '.2f')} | {f(r.get('over_refusal_benign'), '.2f')} | "
            f"{f(r['train_seconds'], '.0f')} | {_alarms(r)} | {evidence(name, result)} |"
        )
    return lines
