"""Shared fixtures: a tiny random Llama that uses the real embedded tokenizer, saved as a model directory,
and small data files. Training tests run on it in seconds."""

from __future__ import annotations

import pytest
from helpers import tiny_llama, tiny_sections, write_jsonl  # noqa: F401 (tiny_sections: tests import it from here)


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from alignkit.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer) -> str:
    """A 2-layer, 32-wide Llama with SmolLM2's tokenizer and chat template, saved like any HF model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(
        vocab_size=len(embedded_tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=2, max_position_embeddings=512
    ).save_pretrained(path)
    embedded_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def word_model_dir(tmp_path_factory) -> str:
    """A 2-layer Llama over the tiny word-level vocabulary, initialized wide (std 0.3) so its samples vary, saved
    with its tokenizer: online methods learn on it in seconds."""
    from helpers import VOCAB, make_word_tokenizer

    path = tmp_path_factory.mktemp("word-llama")
    tiny_llama(vocab_size=len(VOCAB) + 2, initializer_range=0.3, eos_token_id=VOCAB["<|im_end|>"]).save_pretrained(path)
    make_word_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def talker_dir(tmp_path_factory) -> str:
    """The word-level Llama of ``word_model_dir`` with its EOS logit scaled up, so turns end by EOS and
    multi-turn episodes have several turns."""
    import torch
    from helpers import VOCAB, make_word_tokenizer

    path = tmp_path_factory.mktemp("talker")
    model = tiny_llama(vocab_size=len(VOCAB) + 2, initializer_range=0.3, eos_token_id=VOCAB["<|im_end|>"])
    with torch.no_grad():
        model.lm_head.weight[VOCAB["<|im_end|>"]] *= 2.5
    model.save_pretrained(path)
    make_word_tokenizer().save_pretrained(path)
    return str(path)


def pair_records(n: int) -> list[dict]:
    """Conversational pairs with a consistent contrast (a number answer vs a refusal)."""
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} plus {i + 1}?"}],
            "chosen": [{"role": "assistant", "content": f"It is {2 * i + 1}."}],
            "rejected": [{"role": "assistant", "content": "I will not answer that."}],
        }
        for i in range(n)
    ]


@pytest.fixture
def pairs_file(tmp_path) -> str:
    return str(write_jsonl(tmp_path / "pairs.jsonl", pair_records(24)))


@pytest.fixture
def sft_file(tmp_path) -> str:
    return str(
        write_jsonl(
            tmp_path / "sft.jsonl",
            [
                {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"}]}
                for i in range(16)
            ],
        )
    )


@pytest.fixture(autouse=True)
def reference_cache_dir(tmp_path_factory, monkeypatch):
    """Each test gets its own reference log-prob cache (the real one lives in ~/.cache/alignkit/reference)."""
    import alignkit.train.reference as reference

    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setattr(reference, "cache_root", lambda: root)
    return root / "reference"


@pytest.fixture(scope="session")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """A tiny reward model trained for 2 steps on ``pair_records(16)``: a real judge for win-rate and gold tests."""
    from alignkit.train import make_config, run

    tmp = tmp_path_factory.mktemp("rm")
    data = write_jsonl(tmp / "pairs.jsonl", pair_records(16))
    cfg = make_config("rm", model={"name": tiny_model_dir, "dtype": "fp32", "device": "cpu"},
                      data={"train": str(data), "max_length": 64},
                      train={"output_dir": str(tmp / "rm"), "max_steps": 2, "batch_size": 4,
                             "learning_rate": 1e-3})  # fmt: skip
    return str(run("rm", cfg, log=lambda *a, **k: None).model_dir)


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="Rewrite tests/golden/*.json from this run (when a change is meant to move the numbers; say why)",
    )
