"""pass@k: the chance that at least one of k samples is correct, estimated without bias from n >= k samples."""

from __future__ import annotations

import math


def pass_at_k(correct: list[list[bool]], k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, eq. 1) averaged over prompts; ``correct[p]``: the n samples of prompt p."""
    scores = []
    for row in correct:
        n, c = len(row), sum(row)
        scores.append(1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k))
    return sum(scores) / max(1, len(scores))
