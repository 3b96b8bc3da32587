"""Shared fixtures: a tiny random Llama that uses the real embedded tokenizer, saved as a model directory,
and small data files. Training tests run on it in seconds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2, **overrides)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from alignkit.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer) -> str:
    """A 2-layer, 32-wide Llama with SmolLM2's tokenizer and chat template, saved like any HF model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(len(embedded_tokenizer)).save_pretrained(path)
    embedded_tokenizer.save_pretrained(path)
    return str(path)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def pair_records(n: int) -> list[dict]:
    """Conversational pairs with a consistent contrast (a number answer vs a refusal)."""
    return [{"prompt": [{"role": "user", "content": f"What is {i} plus {i + 1}?"}],
             "chosen": [{"role": "assistant", "content": f"It is {2 * i + 1}."}],
             "rejected": [{"role": "assistant", "content": "I will not answer that."}]} for i in range(n)]


@pytest.fixture
def pairs_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "pairs.jsonl", pair_records(24))


@pytest.fixture
def sft_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"}]}
        for i in range(16)])


def tiny_sections(model_dir: str, train_file: str, out: Path, **train) -> dict:
    """Config sections for a quick run on the tiny model."""
    return {"model": {"name": model_dir, "dtype": "fp32", "device": "cpu"},
            "data": {"train": train_file, "max_length": 64},
            "train": {"output_dir": str(out), "batch_size": 4, "learning_rate": 1e-3, "max_steps": 3,
                      "logging_steps": 1, "warmup_ratio": 0.0, "lr_scheduler": "constant", **train}}
