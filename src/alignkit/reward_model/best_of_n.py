"""Best-of-N sampling (rejection sampling against a reward model): sample N completions per prompt from the
policy, keep the one the reward model (or ensemble, aggregated conservatively) scores highest.

The policy's samples are decoded to text and re-tokenized by the reward model's tokenizer and chat template,
so the two need not share a tokenizer. The KL of the best-of-N distribution from the policy is at most
log N - (N - 1) / N (Stiennon et al. 2020, appendix; shown to be an upper bound by Beirami et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from alignkit.data.formats import Content
from alignkit.errors import UserError
from alignkit.generation import generate
from alignkit.reward_model.scoring import RewardModel


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-N || policy) bound: log N - (N - 1) / N (0 for N = 1)."""
    if n < 1:
        raise UserError(f"n = {n}. Fix: sample at least one completion per prompt")
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfN:
    """Per prompt: the N samples, their aggregated rewards ``(N,)``, member std ``(N,)``, and the best index."""

    prompt: Content
    samples: list[str]
    rewards: torch.Tensor
    std: torch.Tensor
    best: int

    def record(self) -> dict:
        return {
            "prompt": self.prompt if isinstance(self.prompt, str) else list(self.prompt),
            "best": self.samples[self.best],
            "best_reward": float(self.rewards[self.best]),
            "samples": [
                {"completion": s, "reward": float(r), "reward_std": float(d)}
                for s, r, d in zip(self.samples, self.rewards, self.std)
            ],
        }


@dataclass
class BestOfNReport:
    n: int
    results: list[BestOfN] = field(default_factory=list)

    def summary(self) -> dict:
        """Score distribution of all samples, of the first sample (N = 1) and of the best, and the KL bound."""
        all_r = torch.cat([r.rewards for r in self.results])
        best = torch.stack([r.rewards[r.best] for r in self.results])
        first = torch.stack([r.rewards[0] for r in self.results])
        q = torch.tensor([0.1, 0.5, 0.9])
        return {
            "prompts": len(self.results),
            "n": self.n,
            "kl_bound": best_of_n_kl(self.n),
            "reward_mean_all": all_r.mean().item(),
            "reward_std_all": all_r.std(unbiased=False).item(),
            "reward_quantiles_all": dict(zip(("p10", "p50", "p90"), torch.quantile(all_r, q).tolist())),
            "reward_mean_n1": first.mean().item(),
            "reward_mean_best": best.mean().item(),
            "reward_quantiles_best": dict(zip(("p10", "p50", "p90"), torch.quantile(best, q).tolist())),
            "uncertainty_mean_best": torch.stack([r.std[r.best] for r in self.results]).mean().item(),
        }


def best_of_n(
    policy,
    policy_tokenizer,
    reward: RewardModel,
    prompts: list[Content],
    n: int = 8,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    how: str = "mean",
    alpha: float = 1.0,
    percentile: float = 10.0,
    batch_size: int = 8,
    progress=None,
) -> BestOfNReport:
    """Sample ``n`` completions per prompt and keep the highest-scoring under ``reward`` aggregated by ``how``."""
    best_of_n_kl(n)
    if temperature <= 0:
        raise UserError("temperature 0 gives N identical greedy samples. Fix: use temperature > 0, e.g. 1.0")
    report = BestOfNReport(n)
    for i, prompt in enumerate(prompts):
        samples = generate(
            policy, policy_tokenizer, [prompt] * n, max_new_tokens, temperature, top_p, batch_size, seed + i
        )
        rewards, std, _ = reward.reward([prompt] * n, samples, how, alpha, percentile, batch_size)
        report.results.append(BestOfN(prompt, samples, rewards, std, int(rewards.argmax())))
        if progress is not None:
            progress(i + 1, len(prompts), report.results[-1])
    return report


def plot_best_of_n(report: BestOfNReport, path) -> None:
    """Histogram of all samples' rewards against the best-of-N rewards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_r = torch.cat([r.rewards for r in report.results]).numpy()
    best = torch.stack([r.rewards[r.best] for r in report.results]).numpy()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(all_r, bins=30, alpha=0.6, label=f"all samples ({len(all_r)})", density=True)
    ax.hist(best, bins=15, alpha=0.6, label=f"best of {report.n} ({len(best)})", density=True)
    ax.set_xlabel("reward (normalized)")
    ax.set_title(f"Best-of-{report.n}: KL bound {best_of_n_kl(report.n):.2f} nats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
