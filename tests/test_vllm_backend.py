"""The vLLM backend where it can be checked without a GPU: the clear errors without vllm or CUDA, and the weights it
pushes (LoRA merged on the fly equals peft's merge_and_unload, the policy untouched)."""

from __future__ import annotations

import copy
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama

from alignkit.errors import UserError
from alignkit.generation.vllm_backend import VLLMSampler, base_model_dir, merged_weights
from alignkit.train.online.rollout_parts import make_sampler


def lora_model(modules_to_save=None, adapters=("default",)):
    """A tiny Llama with LoRA on q/v (and optionally a fully trained copy of some modules); B randomized so the
    adapters change the weights (peft initializes B = 0)."""
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(tie_word_embeddings=modules_to_save is None)
    model.config.name_or_path = model.name_or_path = "/some/base"
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=modules_to_save)
    peft = get_peft_model(model, cfg, adapter_name=adapters[0])
    for name in adapters[1:]:
        peft.add_adapter(name, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return peft


def plain_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
def test_merged_lora_weights_equal_merge_and_unload(modules_to_save):
    peft = lora_model(modules_to_save)
    before = plain_weights(peft)
    got = {k: v.clone() for k, v in merged_weights(peft)}
    want = plain_weights(copy.deepcopy(peft).merge_and_unload())
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
    q_base = peft.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(got["model.layers.0.self_attn.q_proj.weight"], q_base)  # the adapter counts
    after = plain_weights(peft)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was merged into the policy


def test_merged_weights_follow_the_adapter_state():
    """Disabled adapters give the base weights; the active adapter is the one merged; a plain model is itself."""
    peft = lora_model(adapters=("first", "second"))
    with peft.disable_adapter():
        disabled = dict(merged_weights(peft))
    plain = tiny_llama()
    torch.testing.assert_close(disabled, dict(merged_weights(plain)))  # tiny_llama is seeded
    assert dict(merged_weights(plain)).keys() == plain_weights(plain).keys()
    for adapter in ("first", "second"):
        peft.set_adapter(adapter)
        want = plain_weights(copy.deepcopy(peft).merge_and_unload(adapter_names=[adapter]))
        torch.testing.assert_close(dict(merged_weights(peft)), want, rtol=0, atol=1e-6)


def test_base_model_dir_of_lora_and_plain_models(tiny_model_dir):
    assert base_model_dir(lora_model()) == "/some/base"
    from alignkit.models import load_model

    assert base_model_dir(load_model(tiny_model_dir)) == tiny_model_dir


def test_without_vllm_the_error_says_what_is_missing_and_the_fallback():
    tok = SimpleNamespace(eos_id=2)
    with pytest.raises(UserError, match=r"vLLM, which is not installed.*rollout\.backend=alignkit"):
        VLLMSampler(tiny_llama(), tok)
    with pytest.raises(UserError, match="not installed"):
        make_sampler(tiny_llama(), tok, SimpleNamespace(backend="vllm", max_rows=8))


def test_without_cuda_the_error_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"CUDA GPU.*rollout\.backend=alignkit"):
        VLLMSampler(tiny_llama(), SimpleNamespace(eos_id=2))
