"""The loop back into training (spec 001 q4, phase 7): fresh feedback -> export -> mix with the previous data ->
train (KTO from thumbs, DPO from pairs) -> judge the new model against the serving one on held-out prompts ->
served as a new variant at a small weight only if it wins.

    store --export--> fresh.jsonl --mix (share `mix` fresh)--> train.jsonl --train--> new adapter
    held-out prompts --greedy--> new vs serving answers --judge, both orders--> win rate --> deploy or not
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignkit.errors import UserError
from alignkit.outputs import check_output_dir, claim_dir, made_by, write_json_atomic

EXPORT_FORMAT = {"kto": "kto", "dpo": "pairs"}


@dataclass
class RetrainConfig:
    """``base``: the serving model (a model dir, LoRA adapter dir, or None = the embedded default); ``previous``:
    the data it was trained on (same format as the export: kto records or pairs); ``mix``: the share of fresh
    feedback in the training set (spec: 0.5); ``config``: a training YAML to start from (configs/kto.yaml,
    configs/dpo.yaml), ``overrides``: its ``--set`` overrides; ``judge``: a judge spec (alignkit.judges);
    the new model deploys when its win rate (ties half) over the serving one is above ``min_win_rate``."""

    db: str
    out: str
    judge: str
    base: str | None = None
    previous: str | None = None
    mix: float = 0.5
    method: str = "kto"
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    eval_prompts: str = "builtin:helpful_prompts.jsonl"
    limit: int = 50
    max_new_tokens: int = 128
    min_win_rate: float = 0.5
    server: str | None = None
    admin_key: str | None = None
    name: str | None = None
    weight: float = 0.05
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False  # replace an OUT that retrain did not write

    def validate(self) -> None:
        if self.method not in EXPORT_FORMAT:
            raise UserError(f"--method {self.method!r}. Fix: use kto (thumbs) or dpo (pairs from thumbs and votes)")
        if not 0 < self.mix <= 1:
            raise UserError(f"--mix {self.mix}: the share of fresh feedback must be in (0, 1]. Fix: e.g. 0.5")
        if not 0 <= self.min_win_rate < 1:
            raise UserError(f"--min-win-rate {self.min_win_rate}. Fix: use a rate in [0, 1), e.g. 0.5")
        if not 0 < self.weight < 1:
            raise UserError(f"--weight {self.weight}: the new variant's first share must be in (0, 1). Fix: 0.05")
        if self.limit < 1:
            raise UserError(f"--limit {self.limit}. Fix: judge on at least 1 held-out prompt")


def mix_records(fresh: list[dict], previous: list[dict], share: float, seed: int = 0) -> tuple[list[dict], dict]:
    """``fresh`` plus enough of ``previous`` (a seeded sample) that fresh records are ``share`` of the result, fewer
    if ``previous`` runs out; shuffled. Returns (records, counts)."""
    want = round(len(fresh) * (1 - share) / share)
    rng = random.Random(seed)
    old = rng.sample(previous, min(want, len(previous)))
    mixed = [*fresh, *old]
    rng.shuffle(mixed)
    return mixed, {"fresh": len(fresh), "previous": len(old), "previous_wanted": want,
                   "fresh_share": len(fresh) / len(mixed) if mixed else 0.0}  # fmt: skip


def _read(spec: str) -> list[dict]:
    from alignkit.data.readers import read_records

    return [rec for _, rec in read_records(spec)]


def _train_base(cfg: RetrainConfig, out: Path) -> str | None:
    """The model to train from: an adapter is merged into its base first (training stacks a fresh LoRA)."""
    if cfg.base and (Path(cfg.base) / "adapter_config.json").is_file():
        from alignkit.models.merge import merge_adapter

        return str(merge_adapter(cfg.base, out / "serving_merged"))
    return cfg.base


def judge_new_vs_serving(cfg: RetrainConfig, new_model: str, log=print) -> dict:
    """Greedy answers of both models to the held-out prompts, judged in both orders -> the new model's win rate."""
    from alignkit.data.readers import read_records
    from alignkit.eval.judged import responses_from_model
    from alignkit.eval.winrate import win_rate
    from alignkit.judges import judge_pairs, load_judge

    prompts = read_records(cfg.eval_prompts)[: cfg.limit]
    if not prompts:
        raise UserError(
            f"--eval-prompts {cfg.eval_prompts}: no records. Fix: give prompts the model was not trained on"
        )
    log(f"judging new vs serving on {len(prompts)} held-out prompts ({cfg.eval_prompts}) with {cfg.judge}")
    new = responses_from_model(new_model, prompts, cfg.max_new_tokens, 0.0, cfg.seed, cfg.device)
    old = responses_from_model(cfg.base or "smollm2-135m-instruct", prompts, cfg.max_new_tokens, 0.0, cfg.seed,
                               cfg.device)  # fmt: skip
    columns: dict[str, list] = {}
    for key in {k for _, r in prompts for k in r} - {"prompt", "messages"}:
        columns[key] = [r.get(key) for _, r in prompts]
    judge = load_judge(cfg.judge, "--judge", device=cfg.device)
    try:
        verdicts = judge_pairs(judge, [r["prompt"] for _, r in new], [r["response"] for _, r in new],
                               [r["response"] for _, r in old], columns=columns)  # fmt: skip
    finally:
        judge.close()
    outcomes = [v.outcome for v in verdicts if v.outcome is not None]
    if not outcomes:
        raise UserError(f"the judge {cfg.judge} gave no verdict on any prompt. Fix: use a judge that can score these")
    lengths = [
        len(a[1]["response"]) - len(b[1]["response"]) for a, b, v in zip(new, old, verdicts) if v.outcome is not None
    ]
    result = win_rate(outcomes, lengths, seed=cfg.seed)
    return {"n": len(outcomes), "unjudged": len(verdicts) - len(outcomes), "wins": result.wins, "ties": result.ties,
            "losses": result.losses, "rate": result.rate, "bootstrap": list(result.bootstrap),
            "decisive_rate": result.decisive_rate, "wilson": list(result.wilson)}  # fmt: skip


def deploy(cfg: RetrainConfig, source: str) -> dict:
    """Add ``source`` to the running server as variant ``cfg.name`` at ``cfg.weight`` (POST /admin/variants)."""
    import httpx2 as httpx

    headers = {"authorization": f"Bearer {cfg.admin_key}"} if cfg.admin_key else {}
    body = {"name": cfg.name, "source": str(Path(source).resolve()), "weight": cfg.weight}
    try:
        r = httpx.post(f"{cfg.server.rstrip('/')}/admin/variants", json=body, headers=headers, timeout=600)
    except httpx.HTTPError as e:
        raise UserError(f"--server {cfg.server}: {e}. Fix: start `alignkit serve` there or drop --server") from None
    if r.status_code != 200:
        raise UserError(f"--server {cfg.server} refused the new variant ({r.status_code}): {r.text[:300]}")
    return r.json()


def retrain(cfg: RetrainConfig, log=print) -> dict:
    """Run the loop; returns (and writes to OUT/retrain_report.json) what it did and measured."""
    cfg.validate()
    if not Path(cfg.db).exists() and "://" not in cfg.db:
        raise UserError(f"--db {cfg.db}: no such store. Fix: give the database `alignkit serve` wrote to")
    from alignkit.serve.export import export_feedback
    from alignkit.serve.store import Store
    from alignkit.train import make_config, run

    out = check_output_dir(cfg.out, overwrite=cfg.overwrite, inputs=[cfg.db, cfg.base, cfg.previous], owner="retrain")
    ours = made_by(out, "retrain")
    claim_dir(out, "retrain")
    fresh_path, train_path = out / "fresh.jsonl", out / "train.jsonl"
    with Store(cfg.db) as store:
        exported = export_feedback(store, EXPORT_FORMAT[cfg.method], fresh_path)
    for line in exported.lines():
        log(f"export: {line}")
    fresh = _read(str(fresh_path))
    previous = _read(cfg.previous) if cfg.previous else []
    mixed, counts = mix_records(fresh, previous, cfg.mix, cfg.seed)
    from alignkit.data.jsonl import write_jsonl

    write_jsonl(train_path, mixed)
    log(f"mix: {counts['fresh']} fresh + {counts['previous']} previous (wanted {counts['previous_wanted']}) -> "
        f"{train_path}, fresh share {counts['fresh_share']:.2f}")  # fmt: skip
    base = _train_base(cfg, out)
    overrides = [*cfg.overrides, f"data.train={train_path}", f"train.output_dir={out / 'train'}"]
    if ours or cfg.overwrite:  # a re-run replaces the run an earlier retrain wrote here
        overrides.append("train.overwrite=true")
    if base:
        overrides.append(f"model.name={base}")
    run_cfg = make_config(cfg.method, cfg.config, overrides)
    result = run(cfg.method, run_cfg)
    log(f"trained: {result.model_dir}")
    judged = judge_new_vs_serving(cfg, str(result.model_dir), log)
    wins = judged["rate"] > cfg.min_win_rate
    log(f"new vs serving: {judged['wins']} wins, {judged['ties']} ties, {judged['losses']} losses on {judged['n']} "
        f"prompts; win rate {judged['rate']:.3f} (95% bootstrap [{judged['bootstrap'][0]:.3f}, "
        f"{judged['bootstrap'][1]:.3f}]) {'>' if wins else '<='} {cfg.min_win_rate}")  # fmt: skip
    deployed = None
    if wins and cfg.server:
        deployed = deploy(cfg, str(result.model_dir))
        log(f"deployed as variant '{cfg.name}' at weight {cfg.weight}: weights now {deployed['weights']}")
    elif wins:
        log("it wins; no --server given: serve it with --variant NAME=" + str(result.model_dir))
    else:
        log("not deployed: the retrained model does not beat the serving one")
    report = {"config": asdict(cfg), "export": exported.to_dict(), "mix": counts, "model_dir": str(result.model_dir),
              "judged": judged, "wins": wins, "deployed": deployed}  # fmt: skip
    write_json_atomic(out / "retrain_report.json", report)
    return report
