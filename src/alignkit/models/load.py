"""Load a policy and its tokenizer: embedded default, local HF directory, or hub id; LoRA through peft."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from alignkit.config import EMBEDDED_MODEL, LoRAConfig, ModelConfig
from alignkit.errors import UserError
from alignkit.models.embedded import embedded_model_dir


def resolve_model_path(name: str | None) -> str:
    """The embedded default's cache dir for ``smollm2-135m-instruct`` or None; else ``name`` unchanged."""
    return str(embedded_model_dir()) if name in (None, "", EMBEDDED_MODEL) else name


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_source(name: str | None, what: str = "model", _via: str = "") -> None:
    """Fail fast, before anything loads, when ``name`` is a local path that does not exist or is not a model: the
    message names the path and where it came from (an adapter's ``base_model_name_or_path``). Hub ids
    (``org/name`` with no such local path) are left to the hub. An adapter's base is checked too."""
    if name in (None, "", EMBEDDED_MODEL):
        return
    path = Path(name).expanduser()
    if not path.exists():
        if _HUB_ID.match(str(name)) and not str(name).startswith((".", "~")):
            return  # a hub id: transformers resolves it (cache or network)
        raise UserError(f"{what} {name}{_via}: no such file or directory. Fix: give an existing model directory, "
                        f"a hub id (org/name), or '{EMBEDDED_MODEL}'")  # fmt: skip
    if not path.is_dir():
        raise UserError(f"{what} {name}{_via} is a file, not a model directory. Fix: give the directory that holds "
                        "config.json (or adapter_config.json)")  # fmt: skip
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        try:
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError) as e:
            raise UserError(f"{adapter}: unreadable adapter config ({e}). Fix: re-save the adapter") from None
        check_model_source(base, "base model", f" (base_model_name_or_path in {adapter})")
        return
    if not (path / "config.json").is_file():
        raise UserError(f"{what} {name}{_via} is not a model directory (no config.json or adapter_config.json). "
                        "Fix: give a run's model/ directory or a saved transformers model")  # fmt: skip


def quiet_known_warnings() -> None:
    """peft/accelerate read a transformers property deprecated in 5.x; the warning says nothing a user can act on."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device is cuda but no CUDA device is available. Fix: set model.device=auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("model.device is mps but MPS is not available. Fix: set model.device=auto or cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 / AMX), where bf16 autocast is faster than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_mixed_precision(dtype: str, device: torch.device) -> str:
    """accelerate's mixed_precision for a config dtype: 'bf16' or 'no'.

    auto = bf16 on CUDA GPUs that support it and on CPUs with native bf16 instructions, else fp32.
    """
    if dtype == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "no"
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("model.dtype is bf16 but this GPU does not support bf16. Fix: set model.dtype=fp32")
    return "bf16" if dtype == "bf16" else "no"


def load_tokenizer(name: str | None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_source(name)
    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _not_found(name, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str | None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
):
    """A ``*ForCausalLM`` in eval mode; an adapter directory (``adapter_config.json``) loads base + adapter."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    check_model_source(name)
    path = resolve_model_path(name)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        quiet_known_warnings()
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        model = load_model(base, dtype, device, trust_remote_code)
        return PeftModel.from_pretrained(model, path, is_trainable=False).eval()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _not_found(name, e) from None
    return model.to(device).eval()


def _not_found(name: str | None, error: Exception) -> UserError:
    return UserError(
        f"could not load model '{name}': {str(error).splitlines()[0]}. Fix: give a local directory with "
        f"config.json and weights, a hub id (needs network), or '{EMBEDDED_MODEL}' (the embedded default)"
    )


def apply_lora(model, cfg: LoRAConfig, base_name: str | None, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with a trainable LoRA adapter. The adapter records ``base_name`` so merge can find the base.

    ``task_type="SEQ_CLS"`` (reward models): peft also trains and saves the classification head in full.
    """
    from peft import LoraConfig, get_peft_model

    # peft records the base in adapter_config.json from these; the embedded default is stored by its name.
    model.config.name_or_path = model.name_or_path = base_name or EMBEDDED_MODEL
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type=task_type,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise UserError(
            f"lora.target_modules={cfg.target_modules!r}: {e}. Fix: use 'all-linear' or names of linear "
            "layers in this model (e.g. q_proj, v_proj)"
        ) from None


def load_policy(cfg: ModelConfig, lora: LoRAConfig | None, device: torch.device | str, tokenizer=None):
    """The trainable policy (fp32 master weights; bf16 runs under autocast) and its tokenizer."""
    tokenizer = tokenizer or load_tokenizer(cfg.name, cfg.trust_remote_code)
    model = load_model(cfg.name, torch.float32, device, cfg.trust_remote_code)
    if lora is not None:
        model = apply_lora(model, lora, cfg.name)
    return model, tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (LoRA's included): online methods need the sampled and the trained
    log-probs to be of one and the same policy (as TRL and OpenRLHF do for RL)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
