"""Online KTO: the judged loop (``train.online.judged``) with pointwise verdicts. Every sample of an iteration's
prompts is labelled desirable or undesirable by its score (method.rewards / reward_model, or method.judge's pointwise
score: an LLM judge's P(yes)): above ``method.threshold``, or above its prompt's mean score (``label_by:
group_mean``). Samples without a score are left out and counted. The KL reference point of each sample is the
completion of the next prompt's sample at the same position, scored after this sample's prompt (as offline KTO
does); the loss is ``train.methods.kto.kto_batch_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data import KTOItem, Sample, collate_kto
from alignkit.train.methods.kto import kto_batch_loss
from alignkit.train.metrics import MetricSums
from alignkit.train.online.judged import JudgedOnlineMethod


@dataclass(frozen=True)
class OnlineKTOItem(KTOItem):
    fresh: bool = True


class OnlineKTOMethod(JudgedOnlineMethod):
    name = "online_kto"
    objective = "kto"
    item_type = OnlineKTOItem

    def needs_reference(self) -> bool:
        return True

    def labels(self, scores: list, groups: list[list[int]]) -> list[bool | None]:
        """Desirable / undesirable / None (no score, or exactly the group mean) per sample."""
        out: list[bool | None] = [None] * len(scores)
        for grp in groups:
            scored = [i for i in grp if scores[i] is not None]
            if self.mc.label_by == "group_mean":
                if len(scored) < 2:
                    continue
                mean = sum(scores[i] for i in scored) / len(scored)
                for i in scored:
                    out[i] = None if scores[i] == mean else scores[i] > mean
            else:
                for i in scored:
                    out[i] = scores[i] > self.mc.threshold
        return out

    def make_items(self, items, samples: list[Sample], refs: list, sums: MetricSums) -> list[list[OnlineKTOItem]]:
        g, n = self.ro.samples_per_prompt, len(items)
        groups = [list(range(p * g, (p + 1) * g)) for p in range(n)]
        labels = self.labels(self.sample_scores(items, samples), groups)
        limit = self.cfg.data.max_length
        mismatched = [samples[((i // g + 1) % n) * g + i % g].completion_ids for i in range(len(samples))]
        mismatched = [m[: max(1, limit - len(s.prompt_ids))] for s, m in zip(samples, mismatched)]
        ref_kl = self.reference_sums([(s.prompt_ids, m) for s, m in zip(samples, mismatched)])
        for name, value in (("desirable", sum(x is True for x in labels)), ("undesirable", sum(x is False for x in
                            labels)), ("unjudged", sum(x is None for x in labels))):  # fmt: skip
            sums.add_scalar(f"labels/{name}", float(value))
        return [
            [OnlineKTOItem(samples[i].prompt_ids, samples[i].completion_ids, mismatched[i], labels[i],
                           f"prompt {items[p].index}", refs[i], ref_kl[i]) for i in grp if labels[i] is not None]
            for p, grp in enumerate(groups)
        ]  # fmt: skip

    def offline_items(self, spec: str) -> list[OnlineKTOItem]:
        from alignkit.data import to_binary, tokenize_kto, validate_records
        from alignkit.data.readers import read_records

        examples = validate_records(read_records(spec), to_binary)[0]
        items, _ = tokenize_kto(examples, self.tok, self.cfg.data.max_length, self.cfg.max_prompt_length)
        refs = self.reference_sums([(x.prompt_ids, c) for x in items for c in (x.completion_ids, x.kl_completion_ids)])
        return [OnlineKTOItem(**{**x.__dict__, "ref_logp": refs[2 * i], "ref_kl_logp": refs[2 * i + 1]}, fresh=False)
                for i, x in enumerate(items)]  # fmt: skip

    def collate(self, items: list[OnlineKTOItem]) -> dict:
        batch = collate_kto(items, self.pad_id)
        batch["ref_logps"] = torch.tensor([x.ref_logp for x in items] + [x.ref_kl_logp for x in items])
        batch["replayed"] = torch.tensor([not x.fresh for x in items])
        return batch

    def loss(self, module, batch):
        losses, metrics = kto_batch_loss(module, batch, batch["ref_logps"], self.mc)
        replayed = batch["replayed"]
        if replayed.any():
            metrics["replay/accuracies"] = metrics["rewards/accuracies"][replayed]
        return losses, metrics
