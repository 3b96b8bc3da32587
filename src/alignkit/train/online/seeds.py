"""The seeds of the online methods: each random draw depends only on what it is for (the run's seed, the step, the
prompt's index in the data set, a round and a stream), never on batching, the process count or a resume."""

from __future__ import annotations

import numpy as np

SAMPLING, PASS_ORDER, REFILL, EVAL, REPLAY = 0, 1, 2, 3, 7  # independent random streams


def sample_seed(seed: int, step: int, index: int, round_: int = 0, stream: int = SAMPLING) -> int:
    """A seed that depends only on what it is for: the samples of prompt ``index`` (its position in the data set)
    at ``step`` (refill ``round_``), so a step's samples do not depend on batching, processes or resumes."""
    return int(np.random.SeedSequence([stream, seed, step, index, round_]).generate_state(1)[0])
