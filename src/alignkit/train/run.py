"""``run(method, config)``: config -> accelerator, model, data -> the shared loop. Used by the CLI and the API."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from alignkit.config import KTOConfig, PreferenceConfig, RewardConfig, RunConfig, SFTConfig, load_config, to_dict
from alignkit.config.distill import DistillConfig
from alignkit.config.online import GRPOConfig, OnlineKTOConfig, OnlinePreferenceConfig, PPOConfig
from alignkit.data import Tokenizer
from alignkit.data.splits import load_train_eval
from alignkit.errors import ConfigError
from alignkit.losses import LOSSES
from alignkit.models import load_tokenizer, pick_device, pick_mixed_precision, trainable_parameters
from alignkit.models.load import check_model_source, quiet_known_warnings
from alignkit.reward_model.model import REWARD_INFO, write_ensemble_info
from alignkit.train.checkpoint import check_output_dir, check_resume, find_resume_checkpoint
from alignkit.train.loop import TrainResult, fit
from alignkit.train.methods.kto import KTOMethod
from alignkit.train.methods.preference import PreferenceMethod
from alignkit.train.methods.reward_model import RewardMethod
from alignkit.train.methods.sft import SFTMethod
from alignkit.train.online.distill import DistillMethod
from alignkit.train.online.dpo import OnlineDPOMethod
from alignkit.train.online.grpo import GRPOMethod
from alignkit.train.online.kto import OnlineKTOMethod
from alignkit.train.online.ppo import PPOMethod


@dataclass(frozen=True)
class MethodEntry:
    config_class: type
    build: Callable[[Any, int], Any]  # (config, pad_id) -> Method
    loss: str | None = None  # preference methods: the loss the command name selects
    advantage: str | None = None  # GRPO family: the advantage estimator the command name selects by default


METHODS: dict[str, MethodEntry] = {
    "sft": MethodEntry(SFTConfig, SFTMethod),
    "kto": MethodEntry(KTOConfig, KTOMethod),
    "rm": MethodEntry(RewardConfig, RewardMethod),
    "ppo": MethodEntry(PPOConfig, PPOMethod),
    "online-dpo": MethodEntry(OnlinePreferenceConfig, OnlineDPOMethod),
    "online-kto": MethodEntry(OnlineKTOConfig, OnlineKTOMethod),
    "distill": MethodEntry(DistillConfig, DistillMethod),
}
METHODS.update({name: MethodEntry(PreferenceConfig, PreferenceMethod, name) for name in LOSSES})
METHODS.update({name: MethodEntry(GRPOConfig, GRPOMethod, advantage=name) for name in ("grpo", "rloo")})


def make_config(method: str, /, path: str | None = None, overrides: list[str] | tuple = (), **sections) -> RunConfig:
    """The typed config of ``method`` from a YAML file, ``--set`` overrides and/or keyword sections.

    For preference methods the method name selects the loss (``train ipo`` with a DPO config trains IPO).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'. Fix: use one of {', '.join(METHODS)}")
    entry = METHODS[method]
    cfg = load_config(entry.config_class, path, overrides, sections)
    if entry.loss is not None:
        cfg.method.loss = entry.loss
        cfg.validate(str(path or "config"))
    if entry.advantage is not None and cfg.method.advantage is None:
        cfg.method.advantage = entry.advantage
    return cfg


@dataclass
class Prepared:
    """Everything ``fit`` needs, built from a config: used by ``run`` and by jobs that look before/after."""

    cfg: RunConfig
    accelerator: Accelerator
    model: Any
    tokenizer: Any
    tok: Tokenizer
    method: Any
    train_items: list
    eval_items: list
    log: Callable


MODEL_FIELDS = ("method.teacher", "method.ref_model", "method.reward_model", "method.gold_reward_model",
                "method.value_model")  # fmt: skip


def preflight(cfg: RunConfig, resume: str | bool = False) -> None:
    """Everything that can be checked without loading a model, so a mistake costs seconds, not a model load:
    model paths (and an adapter's base), the output dir, the checkpoint a resume names and whether its run's
    model/LoRA/method settings match these."""
    check_model_source(cfg.model.name, "model.name")
    for field in MODEL_FIELDS:
        value = getattr(cfg.method, field.split(".")[1], None)
        if isinstance(value, str) and value:
            check_model_source(value, field)
    out = Path(cfg.train.output_dir)
    check_output_dir(out, cfg.train.overwrite, resume)
    checkpoint = find_resume_checkpoint(out, resume)
    if checkpoint is not None:
        check_resume(checkpoint, out, to_dict(cfg))


def prepare(method: str, cfg: RunConfig, log: Callable = print, resume: str | bool = False) -> Prepared:
    """Accelerator, policy (with LoRA if configured), tokenizer and tokenized data for ``method``."""
    if method in METHODS and METHODS[method].loss is not None:
        cfg.method.loss = METHODS[method].loss
    if method in METHODS and METHODS[method].advantage is not None and cfg.method.advantage is None:
        cfg.method.advantage = METHODS[method].advantage
    cfg.validate()
    preflight(cfg, resume)
    quiet_known_warnings()
    device = pick_device(cfg.model.device)
    # accelerate keeps one AcceleratorState per process; a second run in the same process (API, notebook) may use
    # another precision. Reset it, keeping the process-group state that `accelerate launch` set up.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=pick_mixed_precision(cfg.model.dtype, device),
        log_with=cfg.train.report_to or None,
        project_dir=cfg.train.output_dir,
    )
    log = log if accelerator.is_main_process else (lambda *a, **k: None)
    set_seed(cfg.train.seed)
    hf_tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    tok = Tokenizer(hf_tokenizer)
    impl = METHODS[method].build(cfg, tok.pad_id)
    impl.log = log
    train_items, eval_items = load_train_eval(cfg.data, impl.convert, impl.tokenize, tok, cfg.train.seed, log)
    environment = getattr(getattr(cfg, "rollout", None), "environment", None)
    if environment:  # a bad environment fails before the model loads
        from alignkit.rewards.environments import load_environment

        load_environment(environment, cfg.rollout.environment_args)[1]()
    model = impl.load_model(cfg, hf_tokenizer)
    trainable, total = trainable_parameters(model)
    log(
        f"model {cfg.model.name}: {count(total)} parameters, {count(trainable)} trainable "
        f"({_training_mode(cfg)}); device {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}"
    )
    model.to(accelerator.device)
    return Prepared(cfg, accelerator, model, hf_tokenizer, tok, impl, train_items, eval_items, log)


def run(
    method: str, /, cfg: RunConfig | None = None, *, resume: str | bool = False, callbacks=(), log=print, **sections
) -> TrainResult:
    """Train with ``method``: 'sft', 'dpo', 'ipo', 'simpo', 'orpo', 'hinge', 'robust', 'kto', 'rm', or online:
    'grpo', 'rloo', 'ppo', 'online-dpo' (any DPO-family loss with method.loss), 'online-kto', 'distill'.

    ``cfg`` is a typed config (see ``make_config``); or pass sections as dicts, e.g.
    ``run("dpo", data={"train": "pairs.jsonl"}, lora={"r": 8}, train={"max_steps": 10})``.
    """
    cfg = cfg if cfg is not None else make_config(method, **sections)
    if method == "rm" and cfg.method.ensemble_size > 1:
        return run_ensemble(cfg, resume, callbacks, log)
    p = prepare(method, cfg, log, resume)
    return fit(
        p.method, p.cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, resume, callbacks, p.log
    )


def count(n: int) -> str:
    """A parameter count as people read it: 134.5M, 2.30K, 576."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.2f}K" if n >= 1e3 else str(n)


def _training_mode(cfg: RunConfig) -> str:
    if cfg.lora:
        return f"LoRA r={cfg.lora.r}"
    return "heads only, frozen trunk" if getattr(cfg.method, "freeze_trunk", False) else "full fine-tuning"


def run_ensemble(cfg: RewardConfig, resume: str | bool = False, callbacks=(), log=print) -> TrainResult:
    """Train ``method.ensemble_size`` reward models (seed + k) into ``output_dir/member-k``; writes
    ``ensemble.json`` listing them. With ``resume``, finished members are kept and the rest resumed."""
    out = Path(cfg.train.output_dir)
    k_total = cfg.method.ensemble_size
    results, p = [], None
    for k in range(k_total):
        member_cfg = copy.deepcopy(cfg)
        member_cfg.method.ensemble_size = 1
        member_cfg.train.seed = cfg.train.seed + k
        member_cfg.train.output_dir = str(out / f"member-{k}")
        done = (out / f"member-{k}" / "model" / REWARD_INFO).is_file()
        if resume and done:
            log(f"ensemble member {k + 1}/{k_total}: already trained, kept")
            continue
        log(f"ensemble member {k + 1}/{k_total}: seed {member_cfg.train.seed}")
        member_resume = resume if resume and any((out / f"member-{k}").glob("ckpt-*")) else False
        p = prepare("rm", member_cfg, log, member_resume)
        p.method.member = k
        results.append(
            fit(
                p.method,
                member_cfg,
                p.model,
                p.tokenizer,
                p.train_items,
                p.eval_items,
                p.accelerator,
                member_resume,
                callbacks,
                p.log,
            )  # fmt: skip
        )
    if p is None or p.accelerator.is_main_process:
        write_ensemble_info(out, [f"member-{k}/model" for k in range(k_total)])
    log(f"ensemble of {k_total} reward models: {out} (score with: alignkit score {out} ...)")
    last = results[-1] if results else None
    return TrainResult(
        out,
        out,
        sum(r.steps for r in results),
        last.final_metrics if last else {},
        last.eval_metrics if last else {},
        sum(r.wall_seconds for r in results),
        max((r.peak_memory_mb for r in results), default=0.0),
        False,
        [h for r in results for h in r.history],
    )
