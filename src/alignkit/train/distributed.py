"""Sums over training processes: what the loop and the losses need when a step runs on several processes."""

from __future__ import annotations

from typing import Callable

import torch


def all_reduce_sum() -> Callable[[torch.Tensor], None] | None:
    """An in-place sum over processes when torch.distributed runs with more than one, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.all_reduce
    return None


def global_sum(value: float, accelerator) -> float:
    """``value`` summed over all processes (float64)."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum")[0])
