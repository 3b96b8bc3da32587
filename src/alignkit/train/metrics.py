"""Metric accumulation across micro-batches and processes, and the metrics.jsonl log."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignkit.models.cpu_memory import peak_rss_mb


class MetricSums:
    """Sums and counts of per-example metric values; ``reduce`` averages across processes."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, values in metrics.items():
            values = values.detach().float().reshape(-1)
            self.sums[name] = self.sums.get(name, 0.0) + values.sum().item()
            self.counts[name] = self.counts.get(name, 0.0) + values.numel()

    def add_scalar(self, name: str, value: float, count: float = 1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0.0) + count

    def reduce(self, accelerator) -> dict[str, float]:
        """Means over all processes. A metric some process did not see (e.g. no scored sample there) counts 0 there."""
        names = sorted(self.sums)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            names = sorted(set(gather_object(names)))  # every process reduces the same vector
        if not names:
            return {}
        t = torch.tensor(
            [[self.sums.get(n, 0.0) for n in names], [self.counts.get(n, 0.0) for n in names]],
            dtype=torch.float64,
            device=accelerator.device,
        )
        if accelerator.num_processes > 1:
            t = accelerator.reduce(t, reduction="sum")
        return {n: (t[0, i] / t[1, i]).item() if t[1, i] > 0 else float("nan") for i, n in enumerate(names)}


class JsonlLog:
    """Append-only metrics.jsonl; on resume, entries after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.is_file():
            keep = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line).get("step", 0) <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None and path.is_file():
            path.unlink()

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory if on CUDA, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()
