"""Shared test helpers: tiny word-level tokenizers with a ChatML-like template and tiny random Llama models.

Everything here is built locally (no network, no hub downloads) and is small enough for CPU-only test runs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "system user assistant you are a helpful bot hello hi there how is the weather today it sunny rainy "
    "good bad yes no tell me joke what why one two three four five six seven eight nine ten "
    "! ? . , :"
).split()
VOCAB = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
PAD_ID, UNK_ID, BOS_ID, EOS_TEXT_ID = VOCAB["<pad>"], VOCAB["<unk>"], VOCAB["<s>"], VOCAB["</s>"]
IM_START_ID, IM_END_ID = VOCAB["<|im_start|>"], VOCAB["<|im_end|>"]

# The default system prompt the tiny template inserts when the first message is not a system message.
DEFAULT_SYSTEM = "you are a helpful bot"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_word_tokenizer(auto_bos: bool = True, template_bos: bool = False, chat_template: bool = True):
    """A tiny word-level ``PreTrainedTokenizerFast``.

    ``auto_bos``: the post-processor prepends ``<s>`` to every encoding (like Llama tokenizers); otherwise the
    tokenizer has no BOS at all (``bos_token`` None). ``template_bos``: the chat template also writes the BOS
    text itself at its start. ``chat_template`` False: no chat template. EOS is ``<|im_end|>``, pad ``<pad>``.
    """
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.WordPiece()
    if auto_bos:
        raw.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
        )
    template = None
    if chat_template:
        template = ("{{ bos_token }}" if template_bos else "") + CHATML_TEMPLATE
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>" if auto_bos else None,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "</s>"],
        chat_template=template,
    )
    return tok


def word_ids(text: str) -> list[int]:
    """Ids of whitespace/punctuation-separated words of ``text`` in the tiny vocabulary (no special tokens)."""
    import re

    return [VOCAB.get(w, UNK_ID) for w in re.findall(r"<\|im_start\|>|<\|im_end\|>|</s>|<s>|\w+|[^\w\s]+", text)]


def tiny_llama(tie_word_embeddings: bool = True, vocab_size: int = 64, seed: int = 0, **overrides):
    """A randomly initialized 2-layer Llama, in fp32 and eval mode (no dropout)."""
    import transformers

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
    )
    cfg = transformers.LlamaConfig(**{**settings, **overrides})
    model = transformers.LlamaForCausalLM(cfg)
    return model.float().eval()


def padded_batch(vocab_size: int = 64, seed: int = 1):
    """A right-padded batch of 3 rows with a completion mask.

    Returns ``input_ids``, ``attention_mask``, ``completion_mask`` of shape (3, 10). Row lengths 10, 7, 5;
    completion spans [4, 10), [2, 7), [0, 5) (row 2 starts its completion at position 0, which is never scored).
    """
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (3, 10), generator=g)
    attention_mask = torch.zeros(3, 10, dtype=torch.long)
    completion_mask = torch.zeros(3, 10, dtype=torch.long)
    for row, (length, start) in enumerate([(10, 4), (7, 2), (5, 0)]):
        attention_mask[row, :length] = 1
        completion_mask[row, start:length] = 1
        input_ids[row, length:] = 0  # pad id
    return input_ids, attention_mask, completion_mask


def write_jsonl(path: Path, records: list, blank_lines_after: tuple[int, ...] = ()) -> Path:
    """Write records one JSON object a line (gzip when the name ends with .gz); blank lines after the given indices."""
    lines = []
    for i, rec in enumerate(records):
        lines.append(json.dumps(rec))
        if i in blank_lines_after:
            lines.append("")
    text = "\n".join(lines) + "\n"
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")
    return Path(path)


def shared_data_path(*parts: str) -> Path:
    """``/work/shared/data/...`` located relative to this file: <repo>/tests/helpers.py -> <repo>/../shared/data."""
    return Path(__file__).resolve().parents[2].joinpath("shared", "data", *parts)


def tiny_sections(model_dir: str, train_file: str, out: Path, **train) -> dict:
    """Config sections for a quick run on the tiny model."""
    return {
        "model": {"name": model_dir, "dtype": "fp32", "device": "cpu"},
        "data": {"train": train_file, "max_length": 64},
        "train": {
            "output_dir": str(out),
            "batch_size": 4,
            "learning_rate": 1e-3,
            "max_steps": 3,
            "logging_steps": 1,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            **train,
        },
    }


def online_config(command: str, model_dir: str, data_file: str, out: Path, defaults: dict, **sections):
    """A tiny-model fp32 CPU config for an online method (grpo, rloo, ppo): ``defaults`` (e.g. its ``rollout`` and
    ``method`` sections) on a shared base, then ``sections``, each overriding field by field."""
    from alignkit.train import make_config

    overrides = tiny_sections(model_dir, data_file, out, batch_size=8, learning_rate=3e-3)
    overrides["data"]["max_length"] = 48
    for section, values in [*defaults.items(), *sections.items()]:
        overrides[section] = {**overrides.get(section, {}), **values}
    return make_config(command, **overrides)


class Crash(Exception):
    """Raised by ``crash_at``: a run interrupted on purpose (resume tests)."""


def crash_at(step: int):
    """A loop callback that interrupts the run when it reaches ``step``."""

    def callback(state, metrics):
        if state.step == step:
            raise Crash()

    return callback


CHROME_HINT = "install chromium chromium-driver: apt-get install -y chromium chromium-driver"


def headless_chromium(tmp_path, window: str = "1280,1600", allow_loopback: bool = False):
    """A selenium driver on Debian's headless Chromium with no network (loopback only when ``allow_loopback``);
    skips the test, with the reason printed, when Chromium, its driver or selenium is missing."""
    import shutil

    import pytest

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None
    )
    if chromium is None or driver_path is None:
        print(CHROME_HINT)
        pytest.skip(f"chromium or chromedriver not found; {CHROME_HINT}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("selenium not installed")
        pytest.skip("selenium not installed: pip install -e '.[dev]' -c constraints.txt")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    rules = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" if allow_loopback else "MAP * ~NOTFOUND"
    args = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-extensions", "--no-first-run", f"--window-size={window}",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        f"--host-resolver-rules={rules}",  # any other network request fails (and logs an error)
    ]  # fmt: skip
    for arg in args:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def cli(*args: str) -> tuple[int, str]:
    """``alignkit ARGS`` in this process, as ``main()`` runs it: (exit code, output). A ``UserError`` becomes exit 2
    and ``error: MESSAGE``; any other exception propagates (a traceback fails the test)."""
    from typer.testing import CliRunner

    from alignkit.cli.main import app
    from alignkit.errors import UserError

    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, UserError):
        return 2, result.output + f"error: {result.exception}\n"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output
