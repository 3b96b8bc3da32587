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


def test_multi_turn_episodes_on_the_engine_push_weights_once_and_batch_each_turn(monkeypatch, talker_dir):
    """The glue only (no GPU here): an engine stand-in answers ``generate`` with alignkit's sampler under the same
    seeds, so the vLLM path's episodes must equal ``Sampler.sample_episodes``'s, the weights pushed once per call
    and each turn's rows submitted in one ``generate``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.data import Tokenizer
    from alignkit.generation.sampler import Sampler, SamplingParams, TurnLimits

    model = AutoModelForCausalLM.from_pretrained(talker_dir).eval()
    tok = Tokenizer(AutoTokenizer.from_pretrained(talker_dir))
    local = Sampler(model, tok)
    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    fake.inputs = types.SimpleNamespace(TokensPrompt=lambda prompt_token_ids: prompt_token_ids)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake.inputs)
    calls = {"generate": 0, "push": 0}

    class Engine:
        def generate(self, prompts, requests, use_tqdm=False):
            calls["generate"] += 1
            out = []
            for p, r in zip(prompts, requests):
                params = SamplingParams(n=r.n, max_new_tokens=r.max_tokens, temperature=r.temperature)
                got = local.sample([p], params, [r.seed])[0]
                out.append(SimpleNamespace(outputs=[SimpleNamespace(
                    token_ids=c.token_ids, logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(c.token_ids,
                    c.logprobs)], finish_reason="length" if c.finish_reason == "length" else "stop", stop_reason=None)
                    for c in got]))  # fmt: skip
            return out

    engine = VLLMSampler.__new__(VLLMSampler)
    engine.model, engine.tok, engine.max_rows, engine.eos_ids, engine.llm = model, tok, 8, [tok.eos_id], Engine()
    monkeypatch.setattr(VLLMSampler, "push_weights", lambda self: calls.__setitem__("push", calls["push"] + 1))
    prompts = [local.prompt_ids(p) for p in ["tell me a joke", "hi"]]
    respond = lambda ends: [None if e.turn == 3 else tok.encode("the weather is") for e in ends]  # noqa: E731
    limits = TurnLimits(4, 10, 60)
    got = engine.sample_episodes(prompts, SamplingParams(n=3), [4, 5], respond, limits)
    want = local.sample_episodes(prompts, SamplingParams(n=3), [4, 5], respond, limits)
    assert [[e.tokens for e in g] for g in got] == [[e.tokens for e in g] for g in want]
    turns = max(e.turns for g in want for e in g)
    assert turns > 1 and calls["push"] == 1 and calls["generate"] == turns
