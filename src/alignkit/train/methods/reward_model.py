"""Reward-model training (Bradley-Terry) on pairwise preferences, and ensembles of reward models.

Each pair is scored as two full sequences (prompt + chosen, prompt + rejected) in one forward; the loss is
``alignkit.losses.bradley_terry_loss``. With ``method.heads = K`` the model has K heads on one trunk, each
trained on its own Poisson(1) bootstrap weights of the pairs (fixed per pair and head by the seed), so the
heads disagree where the data is thin. With ``method.ensemble_size = K`` K separate models are trained (seed
+ k; with ``method.bootstrap`` each on a resample of the pairs) into ``output_dir/member-k``.

After training, the rewards of up to ``method.norm_pairs`` training pairs give a mean/std per head, saved in
``alignkit_reward.json`` with the model so scores are normalized the same way everywhere.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace

import torch

from alignkit.config import RewardConfig
from alignkit.data import TokenizedPair, as_chat, collate_pairs, to_pairwise, tokenize_pairs
from alignkit.data.collate import collate_pairs_shared
from alignkit.logprobs import layouts_agree
from alignkit.losses import bradley_terry_loss
from alignkit.models.attention import takes_4d_mask, use_segmented_attention
from alignkit.reward_model.model import REWARD_INFO, RewardScorer, build_reward_model, classifier_of
from alignkit.stats import calibration_terms, ece_from_terms
from alignkit.train.method import Method
from alignkit.train.methods.preference import layout_name

CALIBRATION = "calibration/bin"


@dataclass(frozen=True)
class WeightedPair(TokenizedPair):
    """A pair with one bootstrap weight per head (K-head ensembles)."""

    head_weights: tuple = ()


class RewardMethod(Method):
    name = "rm"
    convert = staticmethod(to_pairwise)

    def __init__(self, cfg: RewardConfig, pad_id: int):
        self.cfg, self.pad_id, self.mc = cfg, pad_id, cfg.method
        self.member = 0  # index of this model in an ensemble (bootstrap seed)
        self.shared = False  # prefix sharing, decided in setup()

    def tokenize(self, examples, tok, *args):
        if self.mc.chat_format and getattr(tok.hf, "chat_template", None):
            examples = [_chat_pair(x) for x in examples]
        return tokenize_pairs(examples, tok, *args)

    def load_model(self, cfg: RewardConfig, tokenizer):
        return build_reward_model(cfg.model, cfg.lora, self.mc.heads, self.mc.freeze_trunk, tokenizer)

    def wrap(self, model):
        return RewardScorer(model)

    def setup(self, model, train_items, eval_items, accelerator):
        tc = self.cfg.train
        self.packed = tc.prefix_sharing and tc.packing and use_segmented_attention(classifier_of(model))
        self.shared = tc.prefix_sharing and _prefix_sharing_works(
            model, train_items, self.pad_id, self.packed, self.log
        )
        self.log(f"batch layout: {layout_name(self.shared, self.packed)}")
        seed = self.cfg.train.seed
        if self.mc.bootstrap and self.mc.heads == 1:
            rng = random.Random(seed * 1000 + self.member)
            train_items = [train_items[rng.randrange(len(train_items))] for _ in train_items]
            self.log(f"bootstrap resample of the {len(train_items)} training pairs (member {self.member})")
        if self.mc.heads > 1:
            g = torch.Generator().manual_seed(seed)
            if self.mc.bootstrap:
                w = torch.poisson(torch.ones(len(train_items), self.mc.heads), generator=g)
            else:
                w = torch.ones(len(train_items), self.mc.heads)
            train_items = [
                WeightedPair(**x.__dict__, head_weights=tuple(w[i].tolist())) for i, x in enumerate(train_items)
            ]
        self.train_items = train_items  # best_files normalizes the best weights on them, as finish does
        return train_items, eval_items

    def _collate_rows(self, items):
        if self.shared:
            b = collate_pairs_shared(items, self.pad_id, packed=self.packed)
            keep = ("input_ids", "attention_mask", "position_ids", "last_index", "segment_lengths", "logical_tokens")
            return {k: b[k] for k in keep if k in b}
        return collate_pairs(items, self.pad_id)

    def collate(self, items):
        batch = self._collate_rows(items)
        if items and isinstance(items[0], WeightedPair):
            batch["head_weights"] = torch.tensor([x.head_weights for x in items])
        return batch

    def loss(self, module, batch):
        rewards = _score(module, batch)  # (2B, heads)
        b = rewards.shape[0] // 2
        chosen, rejected = rewards[:b], rewards[b:]
        per_head = bradley_terry_loss(chosen, rejected, self.mc.margin, self.mc.center_weight)  # (B, heads)
        if "head_weights" in batch:
            losses = (per_head * batch["head_weights"].to(per_head.dtype)).mean(-1)
        else:
            losses = per_head.mean(-1)
        c, r = chosen.detach().mean(-1), rejected.detach().mean(-1)  # the ensemble mean of the heads
        metrics = {
            "rewards/chosen": c,
            "rewards/rejected": r,
            "rewards/margins": c - r,
            "rewards/accuracies": (c > r).float(),
            "calibration/brier": (torch.sigmoid(c - r) - 1) ** 2,
            "rewards/_mean": (c + r) / 2,
            "rewards/_sq": (c**2 + r**2) / 2,
        }
        if self.mc.heads > 1:
            metrics["rewards/head_std"] = torch.cat([chosen, rejected]).detach().std(-1, unbiased=False)
        terms = calibration_terms(c, r, self.mc.calibration_bins)
        metrics.update({f"{CALIBRATION}{i:02d}": terms[:, i] for i in range(terms.shape[1])})
        return losses, metrics

    def summarize(self, metrics):
        out = {k: v for k, v in metrics.items() if not k.startswith((CALIBRATION, "rewards/_"))}
        bins = [v for k, v in sorted(metrics.items()) if k.startswith(CALIBRATION)]
        if bins:
            out["calibration/ece"] = ece_from_terms(bins)
        if "rewards/_mean" in metrics:
            mean, sq = metrics["rewards/_mean"], metrics["rewards/_sq"]
            out["rewards/mean"] = mean
            out["rewards/std"] = max(sq - mean**2, 0.0) ** 0.5
        return out

    def tokens(self, batch: dict) -> int:
        return int(batch["logical_tokens"]) if "logical_tokens" in batch else int(batch["attention_mask"].sum())

    def length(self, item) -> int:
        if self.shared:
            return len(item.prompt_ids) + len(item.chosen_ids) + len(item.rejected_ids)
        return len(item.prompt_ids) + max(len(item.chosen_ids), len(item.rejected_ids))

    @torch.no_grad()
    def best_files(self, module, eval_metrics):
        """The best weights (train.keep_best) get their own normalization file, so ``RewardModel.load`` reads them."""
        return self.finish(module, self.train_items, [], eval_metrics)

    def finish(self, module, train_items, eval_items, eval_metrics):
        """Reward mean/std per head over up to ``norm_pairs`` training pairs -> ``alignkit_reward.json``."""
        was_training = module.training
        module.eval()
        device = next(module.parameters()).device
        pairs = sorted(train_items[: self.mc.norm_pairs], key=self.length)
        rewards = []
        for s in range(0, len(pairs), self.cfg.train.eval_batch_size):
            batch = self._collate_rows(pairs[s : s + self.cfg.train.eval_batch_size])
            # no_grad: keeping each batch's graph held every activation of all norm_pairs (24 GB, OOM, full FT)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16(self.cfg, device)):
                rewards.append(_score(module, {k: v.to(device) for k, v in batch.items()}))
        module.train(was_training)
        r = torch.cat(rewards).cpu()  # (2n, heads)
        d = self.cfg.data
        info = {
            "format": "alignkit-reward-model",
            "version": 1,
            "heads": self.mc.heads,
            "mean": r.mean(0).tolist(),
            "std": r.std(0, unbiased=False).tolist(),
            "normalized_on": f"{len(pairs)} training pairs ({2 * len(pairs)} responses)",
            "base_model": self.cfg.model.name,
            "chat_format": self.mc.chat_format,
            "max_length": d.max_length,
            "max_prompt_length": d.max_prompt_length,
            "prompt_truncation": d.prompt_truncation,
            "seed": self.cfg.train.seed,
            "member": self.member,
            "bootstrap": self.mc.bootstrap,
            "eval_metrics": eval_metrics,
        }
        self.log(f"reward normalization: mean {_fmt(info['mean'])}, std {_fmt(info['std'])} over {len(pairs)} pairs")
        return {REWARD_INFO: json.dumps(info, indent=1) + "\n"}


def _score(module, batch: dict) -> torch.Tensor:
    """Rewards ``(2B, heads)`` of a collated pair batch in either layout (chosen rows first)."""
    if "last_index" in batch:
        return module(
            batch["input_ids"],
            batch["attention_mask"],
            batch["position_ids"],
            batch["last_index"],
            batch.get("segment_lengths"),
        )
    return module(batch["input_ids"], batch["attention_mask"])


def _prefix_sharing_works(model, items: list, pad_id: int, packed: bool, log) -> bool:
    """The shared layout needs attention that takes a 4D mask; the probe on two pairs confirms it (``packed`` or
    not) gives the rewards of the plain layout (else the plain layout is used)."""
    if not takes_4d_mask(classifier_of(model)):
        log("prefix sharing off: this model's attention does not take a custom 4D mask")
        return False
    scorer, device = RewardScorer(model), next(model.parameters()).device
    plain = {k: v.to(device) for k, v in collate_pairs(items[:2], pad_id).items()}
    shared = {k: v.to(device) for k, v in collate_pairs_shared(items[:2], pad_id, packed=packed).items()}
    return layouts_agree(model, lambda: _score(scorer, plain), lambda: _score(scorer, shared), "rewards", log, 1e-4)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _bf16(cfg, device) -> bool:
    from alignkit.models import pick_mixed_precision

    return pick_mixed_precision(cfg.model.dtype, device) == "bf16"


def _chat_pair(x):
    """A text pair as a one-turn chat (see ``as_chat``)."""
    prompt, chosen = as_chat(x.prompt, x.chosen)
    _, rejected = as_chat(x.prompt, x.rejected)
    return replace(x, prompt=prompt, chosen=chosen, rejected=rejected)
