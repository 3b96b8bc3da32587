"""Reward models: a scalar head (or K heads) on a causal-LM backbone, as a transformers
``AutoModelForSequenceClassification`` (``num_labels = K``), so the saved model loads with plain transformers.

The reward of a sequence is the head applied to the last real token's hidden state. The position comes from
the attention mask (lengths), never from the pad id: SmolLM2 pads with its EOS, which every completion ends with.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from alignkit.config import EMBEDDED_MODEL, LoRAConfig, ModelConfig
from alignkit.errors import UserError
from alignkit.logprobs import decoder_hidden
from alignkit.models.load import apply_lora, check_model_source, resolve_model_path

REWARD_INFO = "alignkit_reward.json"  # normalization statistics and scoring settings, saved with the model
ENSEMBLE_INFO = "ensemble.json"  # lists the members of an ensemble trained with method.ensemble_size > 1


@contextlib.contextmanager
def _quiet_transformers():
    """Hide the 'newly initialized weights: score' report: a new reward head is expected to be untrained."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def head_of(model) -> torch.nn.Module:
    """The classification head (``score`` in Llama/Qwen/Mistral/GPT-2, ``classifier`` elsewhere)."""
    clf = classifier_of(model)
    for name in ("score", "classifier"):
        if hasattr(clf, name):
            return getattr(clf, name)
    raise UserError(f"{type(clf).__name__} has no 'score' or 'classifier' head. Fix: use a decoder-only backbone")


def classifier_of(model):
    """The ``*ForSequenceClassification`` inside a peft wrapper (or ``model`` itself)."""
    return model.base_model.model if hasattr(model, "peft_config") else model


def load_classifier(name: str | None, heads: int, tokenizer=None, trust_remote_code: bool = False):
    """A ``*ForSequenceClassification`` with ``heads`` outputs on the backbone ``name`` (fp32, eval mode).

    A directory saved by ``alignkit train rm`` keeps its trained head; a causal LM gets a new head.
    ``config.pad_token_id`` is set for transformers' own pooling (last token that is not the pad id) only when
    the pad differs from EOS; when they are the same (SmolLM2) that pooling would stop one token early, so it is
    left unset and plain transformers scores one unpadded sequence at a time exactly as alignkit does.
    """
    from transformers import AutoModelForSequenceClassification

    check_model_source(name, "reward-model backbone")
    path = resolve_model_path(name)
    if (Path(path) / "adapter_config.json").is_file():
        raise UserError(
            f"{name} is a LoRA adapter. Fix: merge it into its base first (alignkit merge {name} --out DIR) and "
            "train the reward model on DIR"
        )
    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=heads, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not load '{name}' as a reward-model backbone: {str(e).splitlines()[0]}. Fix: give a local "
            f"directory of a decoder model that transformers can load for sequence classification, or "
            f"'{EMBEDDED_MODEL}'"
        ) from None
    if tokenizer is not None:
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        model.config.pad_token_id = pad if pad is not None and pad != eos else None
    return model.eval()


def build_reward_model(model_cfg: ModelConfig, lora: LoRAConfig | None, heads: int, freeze_trunk: bool, tokenizer):
    """The trainable reward model: new head(s) on the backbone; LoRA (head fully trained) or a frozen trunk."""
    model = load_classifier(model_cfg.name, heads, tokenizer, model_cfg.trust_remote_code)
    if freeze_trunk:
        model.requires_grad_(False)
        head_of(model).requires_grad_(True)
    if lora is not None:
        model = apply_lora(model, lora, model_cfg.name, task_type="SEQ_CLS")
    return model


class RewardScorer(torch.nn.Module):
    """``forward(input_ids, attention_mask)`` -> rewards ``(batch, heads)`` in fp32, pooled at each row's last
    real token (rows right-padded). Wraps the model so accelerate/DDP can prepare it as one module."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
        segment_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rows ``(B, T)`` with a 2D mask -> ``(B, heads)``; or prefix-shared pairs (``collate_pairs_shared``, packed
        or not: 4D mask, ``position_ids``, ``last_index`` ``(2B,)``) -> ``(2B, heads)``, chosen rows first."""
        clf = classifier_of(self.model)
        trunk = getattr(clf, clf.base_model_prefix)
        if last_index is not None:
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
            if segment_lengths is not None:
                batch["segment_lengths"] = segment_lengths
            hidden = decoder_hidden(trunk, batch)  # (R, T, d)
            pooled = hidden.reshape(-1, hidden.shape[-1])[last_index]
        else:
            hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            last = attention_mask.sum(-1) - 1  # (B,)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)
        return head_of(self.model)(pooled).float()


def member_dirs(path: str | Path) -> list[Path]:
    """The model directories a reward-model path names, in order: an ensemble's members (its ``ensemble.json``),
    a run's ``model/`` (when the run's output_dir is given), or the directory itself."""
    path = Path(path)
    if (path / ENSEMBLE_INFO).is_file():
        return [path / d for d in json.loads((path / ENSEMBLE_INFO).read_text())["members"]]
    if not (path / REWARD_INFO).is_file() and (path / "model" / REWARD_INFO).is_file():
        return [path / "model"]
    return [path]


def write_ensemble_info(out: Path, members: list[str]) -> None:
    """``out/ensemble.json`` listing the member model dirs (relative to ``out``), written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{ENSEMBLE_INFO}.tmp"
    tmp.write_text(json.dumps({"members": members}, indent=1) + "\n")
    tmp.replace(out / ENSEMBLE_INFO)


def read_info(model_dir: Path) -> dict:
    path = Path(model_dir) / REWARD_INFO
    if not path.is_file():
        raise UserError(
            f"{model_dir} is not a reward model saved by alignkit (no {REWARD_INFO}). Fix: pass the 'model' "
            "directory (or the output_dir of an ensemble) written by alignkit train rm"
        )
    return json.loads(path.read_text())
