"""Held-out pairwise accuracy: does the model rank chosen above rejected?

``score_pairs`` returns summed completion log-probs and token counts for every pair; from two such scorings
(policy and reference) come the mean-log-prob ranking accuracy and the implicit DPO reward accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data import TokenizedPair, collate_pairs
from alignkit.logprobs import token_logprobs


@dataclass
class PairScores:
    """Per pair, shape ``(n,)``: summed completion log-probs and completion token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @property
    def mean_logp_accuracy(self) -> float:
        """Share of pairs whose chosen completion has the higher mean per-token log-prob."""
        return (self.chosen / self.chosen_tokens > self.rejected / self.rejected_tokens).float().mean().item()


@torch.no_grad()
def score_pairs(model, pairs: list[TokenizedPair], pad_id: int, batch_size: int = 8) -> PairScores:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(
        range(len(pairs)),
        key=lambda i: len(pairs[i].prompt_ids) + max(len(pairs[i].chosen_ids), len(pairs[i].rejected_ids)),
    )
    chosen, rejected, n_c, n_r = [], [], [], []
    for s in range(0, len(pairs), batch_size):  # in length order (less padding), restored below
        batch = {
            k: v.to(device) for k, v in collate_pairs([pairs[i] for i in order[s : s + batch_size]], pad_id).items()
        }
        sums = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).sum(-1)
        counts = batch["completion_mask"][:, 1:].sum(-1).float()
        b = sums.shape[0] // 2
        chosen.append(sums[:b]), rejected.append(sums[b:]), n_c.append(counts[:b]), n_r.append(counts[b:])
    model.train(was_training)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return PairScores(*(torch.cat(x).cpu()[inverse] for x in (chosen, rejected, n_c, n_r)))


def implicit_reward_accuracy(policy: PairScores, reference: PairScores) -> float:
    """Share of pairs with beta*log(pi/ref)(chosen) > beta*log(pi/ref)(rejected) (independent of beta > 0)."""
    margin = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)
    return (margin > 0).float().mean().item()


def pairwise_report(before: PairScores, after: PairScores) -> dict[str, float]:
    """Accuracies before/after training; ``before`` is the reference (initial policy)."""
    return {
        "pairs": len(before.chosen),
        "mean_logp_accuracy_before": before.mean_logp_accuracy,
        "mean_logp_accuracy_after": after.mean_logp_accuracy,
        "implicit_reward_accuracy_after": implicit_reward_accuracy(after, before),
        "mean_logp_chosen_before": (before.chosen / before.chosen_tokens).mean().item(),
        "mean_logp_chosen_after": (after.chosen / after.chosen_tokens).mean().item(),
        "mean_logp_rejected_before": (before.rejected / before.rejected_tokens).mean().item(),
        "mean_logp_rejected_after": (after.rejected / after.rejected_tokens).mean().item(),
    }
