"""Scoring (prompt, response) with a saved reward model or ensemble.

Text is rendered with the reward model's own tokenizer and chat template (``as_chat``), so a policy with a
different tokenizer works: its output is decoded to text and re-tokenized here. Rewards are normalized with
the mean/std saved at training time, so scores of different runs and ensemble members are comparable.

An ensemble of LoRA reward models on one base loads the base once and switches adapters (memory-light).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.data import Tokenizer, as_chat, pad_sequences
from alignkit.data.formats import Content
from alignkit.data.tokenize import TruncationStats, fit_lengths
from alignkit.errors import DataError, UserError
from alignkit.models import load_tokenizer, pick_device, pick_mixed_precision
from alignkit.models.load import quiet_known_warnings
from alignkit.reward_model.aggregate import aggregate, uncertainty
from alignkit.reward_model.model import RewardScorer, load_classifier, member_dirs, read_info


@dataclass
class Member:
    """One reward model of an ensemble: its weights (or adapter name on a shared base) and normalization."""

    scorer: RewardScorer
    adapter: str | None
    mean: torch.Tensor  # (heads,)
    std: torch.Tensor  # (heads,)
    info: dict


class RewardModel:
    """A saved reward model or ensemble. ``score(prompts, responses)`` -> ``(n, k)`` rewards, one column per
    member head; ``reward(...)`` aggregates them to ``(n,)`` with their std."""

    def __init__(self, members: list[Member], tokenizer, device: torch.device, mixed_precision: str = "no"):
        self.members, self.tokenizer, self.device = members, tokenizer, device
        self.tok = Tokenizer(tokenizer)
        self.autocast = mixed_precision == "bf16"
        info = members[0].info
        self.chat_format = info.get("chat_format", True) and bool(getattr(tokenizer, "chat_template", None))
        self.max_length = info.get("max_length", 1024)
        self.max_prompt_length = info.get("max_prompt_length")
        self.prompt_truncation = info.get("prompt_truncation", "keep_end")

    @property
    def heads(self) -> int:
        return sum(m.mean.numel() for m in self.members)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "fp32") -> RewardModel:
        """A ``model`` dir of ``alignkit train rm``, or an ensemble's output dir (with ``ensemble.json``)."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"reward model {path} does not exist. Fix: pass the directory alignkit train rm wrote")
        dirs = member_dirs(path)
        infos = [read_info(d) for d in dirs]
        quiet_known_warnings()
        dev = pick_device(device)
        tokenizer = load_tokenizer(str(dirs[0]))
        members: list[Member] = []
        adapters = [d for d in dirs if (d / "adapter_config.json").is_file()]
        if adapters and len(adapters) == len(dirs) and len({i["base_model"] for i in infos}) == 1:
            from peft import PeftModel

            base = load_classifier(infos[0]["base_model"], infos[0]["heads"], tokenizer)
            model = PeftModel.from_pretrained(base, str(dirs[0]), adapter_name="member-0", is_trainable=False)
            for k, d in enumerate(dirs[1:], start=1):
                model.load_adapter(str(d), adapter_name=f"member-{k}", is_trainable=False)
            scorer = RewardScorer(model.to(dev).eval())
            members = [_member(scorer, f"member-{k}", info) for k, info in enumerate(infos)]
        else:
            for d, info in zip(dirs, infos):
                if (d / "adapter_config.json").is_file():
                    from peft import PeftModel

                    base = load_classifier(info["base_model"], info["heads"], tokenizer)
                    model = PeftModel.from_pretrained(base, str(d), is_trainable=False)
                else:
                    model = load_classifier(str(d), info["heads"], tokenizer)
                members.append(_member(RewardScorer(model.to(dev).eval()), None, info))
        return cls(members, tokenizer, dev, pick_mixed_precision(dtype, dev))

    def tokenize(self, prompt: Content, response: Content) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) as the reward model saw its training data, cut to its max_length."""
        if self.chat_format:
            prompt, response = as_chat(prompt, response)
        p, c = self.tok.split(prompt, response)
        fitted = fit_lengths(
            p, [c], self.max_length, self.max_prompt_length, self.prompt_truncation, "truncate",
            TruncationStats(), "", self.tok.auto_bos,
        )  # fmt: skip
        return fitted[0], fitted[1][0]

    @torch.no_grad()
    def score(
        self, prompts: list[Content], responses: list[Content], batch_size: int = 8, normalize: bool = True
    ) -> torch.Tensor:
        """Rewards ``(n, heads)`` of each (prompt, response); normalized with the saved mean/std by default."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return torch.zeros(0, self.heads)
        rows = [self.tokenize(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))  # less padding
        columns = []
        for m in self.members:
            if m.adapter is not None:
                m.scorer.model.set_adapter(m.adapter)
            out = torch.empty(len(rows), m.mean.numel())
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                batch = pad_sequences([rows[i][0] for i in idx], [rows[i][1] for i in idx], self.tok.pad_id)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    r = m.scorer(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
                out[idx] = r.float().cpu()
            columns.append(out)
        raw = torch.cat(columns, dim=1)
        return self.normalize(raw) if normalize else raw

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """``(n, heads)`` raw rewards -> (r - mean) / std with each member's saved statistics."""
        mean = torch.cat([m.mean for m in self.members])
        std = torch.cat([m.std for m in self.members])
        return (raw - mean) / std

    def reward(
        self,
        prompts: list[Content],
        responses: list[Content],
        how: str = "mean",
        alpha: float = 1.0,
        percentile: float = 10.0,
        batch_size: int = 8,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(aggregated reward ``(n,)``, member std ``(n,)``, all member rewards ``(n, k)``)."""
        rewards = self.score(prompts, responses, batch_size)
        return aggregate(rewards, how, alpha, percentile), uncertainty(rewards), rewards


def _member(scorer: RewardScorer, adapter: str | None, info: dict) -> Member:
    mean = torch.tensor(info.get("mean", [0.0] * info["heads"]), dtype=torch.float32)
    std = torch.tensor(info.get("std", [1.0] * info["heads"]), dtype=torch.float32).clamp(min=1e-6)
    return Member(scorer, adapter, mean, std, info)


def to_scored(record, source: str):
    """A record to score: ``prompt`` + ``response`` (or ``completion``), or chat ``messages`` -> ``SFTExample``."""
    from alignkit.data.formats import InvalidRecord, to_sft

    if isinstance(record, dict) and "response" in record and "completion" not in record:
        record = {**record, "completion": record["response"]}
    try:
        return to_sft(record, source)
    except InvalidRecord as e:
        if e.field == "completion" and "missing" in e.problem:
            raise InvalidRecord(
                "response", "is missing; records to score need prompt + response, or messages"
            ) from None
        raise


def _is_pairwise(records: list) -> bool:
    return bool(records) and isinstance(records[0][1], dict) and {"chosen", "rejected"} <= set(records[0][1])


def check_scorable(records: list[tuple[str, dict]], spec: str) -> None:
    """Before any model loads: every record of ``spec`` is a pair or a (prompt, response); else one ``DataError``
    listing the bad ones (``alignkit score`` scores every record, so it has no skip policy)."""
    from alignkit.data import to_pairwise, validate_records

    if not records:
        raise DataError(f"{spec}: no records. Fix: give records with prompt + response, or prompt/chosen/rejected")
    _, problems = validate_records(records, to_pairwise if _is_pairwise(records) else to_scored, "skip")
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(f"{len(problems)} record(s) cannot be scored:\n  {listed}\nFix: correct or remove these "
                        "records (score writes one scored record per input record)")  # fmt: skip


def score_records(
    reward: RewardModel, records: list[tuple[str, dict]], how: str = "mean", alpha: float = 1.0,
    percentile: float = 10.0, batch_size: int = 8,
) -> tuple[list[dict], dict | None]:  # fmt: skip
    """Score records: (prompt, response) records get ``reward``/``reward_std``/``rewards``; pairwise records
    (prompt/chosen/rejected) get ``reward_chosen``/``reward_rejected`` and a summary (accuracy, ECE...)."""
    from alignkit.data import to_pairwise, validate_records
    from alignkit.stats import reward_metrics

    if _is_pairwise(records):
        pairs, _ = validate_records(records, to_pairwise)
        prompts = [x.prompt for x in pairs]
        raw_c = reward.score(prompts, [x.chosen for x in pairs], batch_size, normalize=False)
        raw_r = reward.score(prompts, [x.rejected for x in pairs], batch_size, normalize=False)
        norm_c, norm_r = reward.normalize(raw_c), reward.normalize(raw_r)
        r_c, s_c = aggregate(norm_c, how, alpha, percentile), uncertainty(norm_c)
        r_r, s_r = aggregate(norm_r, how, alpha, percentile), uncertainty(norm_r)
        out = [
            {**rec, "reward_chosen": float(a), "reward_rejected": float(b), "reward_std_chosen": float(sa),
             "reward_std_rejected": float(sb)}
            for (_, rec), a, b, sa, sb in zip(records, r_c, r_r, s_c, s_r)
        ]  # fmt: skip
        # calibration is a property of the trained (raw) scale: sigma(r_c - r_r) is the model's preference probability
        return out, reward_metrics(aggregate(raw_c, how, alpha, percentile), aggregate(raw_r, how, alpha, percentile))
    examples, _ = validate_records(records, to_scored)
    r, std, every = reward.reward([x.prompt for x in examples], [x.completion for x in examples], how, alpha,
                                  percentile, batch_size)  # fmt: skip
    out = [
        {**rec, "reward": float(a), "reward_std": float(s), "rewards": [round(float(v), 6) for v in row]}
        for (_, rec), a, s, row in zip(records, r, std, every)
    ]
    return out, None


def pair_agreement(rm, pairs: str) -> dict:
    """How often the reward model ``rm`` scores the chosen answer above the rejected one on the clear-cut ``pairs``
    (a data spec) -> {"accuracy", "pairs", "per_category": {category: accuracy}}. A judge far below 1 on pairs a
    reader decides at once is not evidence, whatever its held-out accuracy on noisier data."""
    from alignkit.data import read_records

    rows, _ = score_records(rm, read_records(pairs))
    by: dict[str, list[bool]] = {}
    for r in rows:
        by.setdefault(r.get("category") or "all", []).append(r["reward_chosen"] > r["reward_rejected"])
    hits = [x for v in by.values() for x in v]
    return {"accuracy": sum(hits) / len(hits), "pairs": len(hits),
            "per_category": {k: sum(v) / len(v) for k, v in by.items()}}  # fmt: skip
