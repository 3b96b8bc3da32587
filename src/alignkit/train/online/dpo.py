"""Online and iterative DPO (and the rest of the DPO family): a judge makes a pair per prompt from its samples.

    every method.iteration_steps steps: prompts of those steps -> rollout.samples_per_prompt samples each from the
      current policy (the rollout's sampler) -> rewards (method.rewards / reward_model) -> a (chosen, rejected) pair
      per prompt from a judge: the best and worst sample by reward, or an order-sensitive (LLM) judge's verdict on
      the first two samples asked in both orders -> reference log-probs of both
    each step: its prompts' pairs + pairs replayed from earlier iterations (and method.replay_data) at
      method.replay_ratio -> the DPO-family loss (``train.methods.preference.pair_loss``) -> the loop's optimizer step

``iteration_steps: 1`` is fully online DPO with an AI or verifier judge (Guo et al. 2024, "Direct Language Model
Alignment from Online AI Feedback"); more is iterative DPO (Xu et al. 2023; Yuan et al. 2024), whose pairs are all
sampled by the policy of the iteration's start. The reference stays the initial policy. The pending pairs of an
iteration and the replay pool are part of the checkpoint, so a resumed run trains on the same pairs.

Monitors: ``pairs/*`` (made, ties, unjudged per prompt), ``judge/inconsistent`` and ``judge/self_consistency``
(an order-sensitive judge), ``kl/sequence`` (k1 on the samples, at temperature 1), ``completion/length``, and the
implicit reward of replayed pairs apart from fresh ones (``replay/margins`` vs ``rewards/margins``): its drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data import Sample, collate_pairs
from alignkit.logprobs import sequence_logprobs
from alignkit.losses import LOSSES
from alignkit.train.methods.preference import ScoredPair, pair_loss
from alignkit.train.metrics import MetricSums
from alignkit.train.online.judged import JudgedOnlineMethod


@dataclass(frozen=True)
class OnlinePair(ScoredPair):
    """A judged pair with its reference sums; ``fresh``: made from this step's prompts (else replayed)."""

    fresh: bool = True


class OnlineDPOMethod(JudgedOnlineMethod):
    name = "online_dpo"
    item_type = OnlinePair

    def __init__(self, cfg, pad_id: int):
        super().__init__(cfg, pad_id)
        self.spec = LOSSES[self.mc.loss]
        params = {"beta": self.mc.resolved_beta, "label_smoothing": self.mc.label_smoothing,
                  "gamma": self.mc.gamma}  # fmt: skip
        self.loss_params = {k: v for k, v in params.items() if k in self.spec.params}
        self.sft_weight = self.mc.resolved_sft_weight

    @property
    def objective(self) -> str:
        return self.mc.loss

    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    def offline_items(self, spec: str) -> list[OnlinePair]:
        from alignkit.data import to_pairwise, tokenize_pairs, validate_records
        from alignkit.data.readers import read_records

        examples = validate_records(read_records(spec), to_pairwise)[0]
        pairs, _ = tokenize_pairs(examples, self.tok, self.cfg.data.max_length, self.cfg.max_prompt_length)
        refs = self.reference_sums([(p.prompt_ids, c) for p in pairs for c in (p.chosen_ids, p.rejected_ids)])
        return [OnlinePair(**p.__dict__, ref_chosen=refs[2 * i], ref_rejected=refs[2 * i + 1], fresh=False)
                for i, p in enumerate(pairs)]  # fmt: skip

    def make_items(self, items, samples: list[Sample], refs: list, sums: MetricSums) -> list[list[OnlinePair]]:
        """Per prompt (``items`` order), its pair, or nothing (a tie, or unjudged)."""
        g = self.ro.samples_per_prompt
        groups = [list(range(p * g, (p + 1) * g)) for p in range(len(items))]
        picks: list[tuple[int, int] | None] = []
        ties = unjudged = 0
        if self.judge is not None and not self.judge.order_invariant:
            from alignkit.judges import consistency, judge_pairs

            names = sorted({k for x in items for k in x.columns})
            columns = {k: [x.columns.get(k) for x in items] for k in names}
            verdicts = judge_pairs(self.judge, [x.prompt for x in items], [samples[i[0]].text for i in groups],
                                   [samples[i[1]].text for i in groups], columns=columns,
                                   both_orders=self.mc.both_orders, inconsistent="drop")  # fmt: skip
            stats = consistency(verdicts)
            if "self_consistency" in stats:
                sums.add_scalar("judge/self_consistency", stats["self_consistency"])
            sums.add_scalar("judge/inconsistent", float(sum(v.detail.get("consistent") is False for v in verdicts)))
            for grp, v in zip(groups, verdicts):
                if v.outcome is None:
                    unjudged += v.detail.get("consistent") is not False
                    picks.append(None)
                elif v.outcome == 0.5:
                    ties += 1
                    picks.append(None)
                else:
                    picks.append((grp[0], grp[1]) if v.outcome == 1.0 else (grp[1], grp[0]))
        else:
            scores = self.sample_scores(items, samples)
            for grp in groups:
                scored = [i for i in grp if scores[i] is not None]
                if len(scored) < 2:
                    unjudged += 1
                    picks.append(None)
                    continue
                best = max(scored, key=lambda i: scores[i])
                worst = min(scored, key=lambda i: scores[i])
                if scores[best] - scores[worst] <= self.mc.margin:
                    ties += 1
                    picks.append(None)
                else:
                    picks.append((best, worst))
        made = sum(p is not None for p in picks)
        for name, value in (("made", made), ("ties", ties), ("unjudged", unjudged)):
            sums.add_scalar(f"pairs/{name}", float(value))
        return [
            [] if pick is None else [OnlinePair(
                samples[pick[0]].prompt_ids, samples[pick[0]].completion_ids, samples[pick[1]].completion_ids,
                f"prompt {items[p].index}", ref_chosen=refs[pick[0]] or 0.0, ref_rejected=refs[pick[1]] or 0.0,
            )]
            for p, pick in enumerate(picks)
        ]  # fmt: skip

    # ---- training on pairs
    def collate(self, items: list[OnlinePair]) -> dict:
        batch = collate_pairs(items, self.pad_id)
        batch["ref_logps"] = torch.tensor([x.ref_chosen for x in items] + [x.ref_rejected for x in items])
        batch["replayed"] = torch.tensor([not x.fresh for x in items])
        return batch

    def loss(self, module, batch):
        mask = batch["completion_mask"]
        sums = sequence_logprobs(module(batch["input_ids"], batch["attention_mask"], mask), mask)  # (2B,)
        n_tokens = mask[:, 1:].sum(-1).clamp(min=1)
        ref = batch["ref_logps"].to(sums.dtype) if self.spec.needs_reference else None
        losses, metrics = pair_loss(self.spec, self.loss_params, self.sft_weight, sums, n_tokens, ref)
        replayed = batch["replayed"]
        if replayed.any():  # the implicit reward of older pairs under today's policy: its drift
            metrics["replay/margins"] = metrics["rewards/margins"][replayed].detach()
            metrics["replay/accuracies"] = metrics["rewards/accuracies"][replayed]
        return losses, metrics
