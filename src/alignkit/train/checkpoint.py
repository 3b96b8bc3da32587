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
    output_dir: Path, step: int, model, optimizer, scheduler, state: dict, accelerator, keep_last: int
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
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng_{accelerator.process_index}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))
    return state
