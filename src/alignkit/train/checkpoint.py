"""Checkpoints: written atomically (temp dir + rename), keep-last-k, and exact resume.

A checkpoint ``ckpt-0000100/`` holds the trainable weights (LoRA adapter or full model) as safetensors,
optimizer and scheduler state, every rank's RNG state, and ``state.json`` (step, early-stopping state and
the global batch size, which must match on resume for the data order to continue exactly).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignkit.errors import UserError

PREFIX = "ckpt-"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    state: dict,
    accelerator,
    keep_last: int,
    config_text: str | None = None,
) -> Path:
    """Write ``ckpt-{step}`` atomically on the main process; every rank adds its RNG state."""
    final = output_dir / f"{PREFIX}{step:07d}"
    tmp = output_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if config_text is not None:  # the run's settings, compared on resume
            (tmp / "config.yaml").write_text(config_text)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs of interrupted writes are ignored)."""
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.glob(f"{PREFIX}*") if (p / "state.json").is_file())


def find_resume_checkpoint(output_dir: Path, resume: str | bool) -> Path | None:
    if resume in (False, None, ""):
        return None
    if resume is True or resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise UserError(
                f"--resume: no checkpoint in {output_dir}. Fix: set train.save_steps so runs write "
                "checkpoints, or start without --resume"
            )
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise UserError(f"--resume {path}: not a complete checkpoint (no state.json). Fix: pass a ckpt-* directory")
    return path


RESUME_SECTIONS = ("model", "lora", "method")  # must match the checkpoint's run for a resume
RESUME_FREE = {"model.device"}  # may change on resume (a run moves to another machine)


def _flat(value, prefix: str) -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def resume_differences(saved: dict, current: dict) -> list[str]:
    """``section.field: old -> new`` for each model/LoRA/method setting that differs between two config dicts."""
    old = {k: v for s in RESUME_SECTIONS for k, v in _flat(saved.get(s), s).items()}
    new = {k: v for s in RESUME_SECTIONS for k, v in _flat(current.get(s), s).items()}
    missing = object()
    return [
        f"{key}: {old.get(key, 'not set')} -> {new.get(key, 'not set')}"
        for key in sorted(set(old) | set(new))
        if key not in RESUME_FREE and old.get(key, missing) != new.get(key, missing)
    ]


def check_resume(checkpoint: Path, output_dir: Path, current: dict) -> None:
    """Refuse a resume whose model, LoRA or method settings differ from the checkpoint's run: one ``UserError``
    listing every difference (old -> new). Reads only YAML, so it runs before any model loads."""
    import yaml

    saved_path = next((p for p in (checkpoint / "config.yaml", output_dir / "config.yaml") if p.is_file()), None)
    if saved_path is None:
        return
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot resume: {saved_path} is unreadable ({e}). Fix: restore it, or start anew") from None
    diffs = resume_differences(saved, current)
    if diffs:
        raise UserError(
            f"cannot resume from {checkpoint}: these settings differ from the run that wrote it ({saved_path}):\n  "
            + "\n  ".join(diffs)
            + "\nFix: resume with the run's settings (drop those --set overrides), or start a new run in another "
            "train.output_dir"
        )


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator, expected: dict) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns the saved trainer state."""
    state = json.loads((path / "state.json").read_text())
    for key, value in expected.items():
        if state.get(key) != value:
            raise UserError(
                f"cannot resume from {path}: {key} was {state.get(key)} there and is {value} now. "
                f"Fix: resume with the same {key} (batch_size x grad_accum x processes, data)"
            )
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise UserError(
            f"cannot resume from {path}: the model has no parameter {missing[0]}. "
            "Fix: resume with the same model and LoRA settings"
        )
    shapes = [f"{n} {tuple(v.shape)} -> {tuple(params[n].shape)}" for n, v in weights.items()
              if tuple(v.shape) != tuple(params[n].shape)]  # fmt: skip
    if shapes:
        raise UserError(
            f"cannot resume from {path}: {len(shapes)} parameter(s) have another shape in this model, e.g. "
            f"{shapes[0]}. Fix: resume with the same model and LoRA settings"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng_{accelerator.process_index}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))
    return state


def check_output_dir(out: Path, overwrite: bool, resume: str | bool) -> None:
    """Before anything loads: ``out`` is not a file, and a fresh run does not start over an earlier one unless
    ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"train.output_dir {out} is a file, not a directory. Fix: choose a directory path")
    if resume:
        return
    earlier = list_checkpoints(out) + [p for p in (out / "model", out / "best", out / "metrics.jsonl") if p.exists()]
    if earlier and not overwrite:
        raise UserError(
            f"{out} already holds a run ({', '.join(p.name for p in earlier[:3])}). Fix: add --resume to "
            "continue it, choose another train.output_dir, or set train.overwrite=true to start afresh"
        )


def claim_output_dir(out: Path, overwrite: bool, accelerator) -> None:
    """Refuse to start a fresh run over an earlier one unless asked; with overwrite, drop its checkpoints."""
    check_output_dir(out, overwrite, False)
    if not list_checkpoints(out) and not (out / "best").exists():
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for ckpt in list_checkpoints(out):
            shutil.rmtree(ckpt)
        shutil.rmtree(out / "best", ignore_errors=True)  # an earlier run's best weights are not this run's
    accelerator.wait_for_everyone()
