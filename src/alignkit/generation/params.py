"""What a sampling request asks for (``SamplingParams``), what it gets back (``Completion``), and the counters of
the last sampling call (``SamplerStats``): the vocabulary every sampler backend and the decode loop share."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.errors import UserError

FINISH_REASONS = ("eos", "stop", "length", "cancelled")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature`` 0 = greedy; ``top_k`` 0 and ``top_p`` 1 and ``min_p`` 0 = off."""

    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop: tuple[str, ...] = ()

    def validate(self, where: str = "sampling") -> None:
        checks = [
            (self.n >= 1, "n", "sample at least 1 completion per prompt"),
            (self.max_new_tokens >= 1, "max_new_tokens", "generate at least 1 token"),
            (self.temperature >= 0, "temperature", "use 0 (greedy) or a positive temperature"),
            (0 < self.top_p <= 1, "top_p", "use a value in (0, 1]; 1 = off"),
            (self.top_k >= 0, "top_k", "use 0 (off) or a positive number of tokens"),
            (0 <= self.min_p < 1, "min_p", "use a value in [0, 1); 0 = off"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "use non-empty strings"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise UserError(f"{where}: {name} is {getattr(self, name)!r}. Fix: {fix}")

    @property
    def draw_key(self) -> tuple:
        """The fields that decide how a token is drawn (rows with equal keys draw in one batched call)."""
        return (self.temperature, self.top_p, self.top_k, self.min_p)


@dataclass
class Completion:
    """One sampled completion: token ids ``(L,)`` (EOS included when it ended the row), their log-probs ``(L,)``,
    why it ended (eos | stop | length | cancelled), and its text (special tokens dropped, cut before a stop
    string, no half character at a length cut)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = ""


@dataclass
class SamplerStats:
    """Counters of the last ``sample`` call: tokens generated, decode steps, seconds (prefill, decode)."""

    tokens: int = 0
    steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    row_steps: int = 0  # rows x steps actually run (finished rows waiting for compaction included)
    extra: dict = field(default_factory=dict)


def check_request(prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> None:
    """The checks every sampler backend makes before sampling: valid params, one seed per prompt, no empty prompt."""
    params.validate()
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    if any(not p for p in prompts):
        raise UserError("an empty prompt has no token to condition on. Fix: give every prompt some text")
