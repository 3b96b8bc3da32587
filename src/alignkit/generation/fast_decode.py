"""A lean decode step for Llama-family models (Llama, Mistral without sliding window, Qwen2, SmolLM2).

transformers runs a decode step through ~50 small operators per layer (and, under autocast, a dtype cast before
each matmul); at one token per row that overhead is most of the step on a CPU. ``FastDecoder`` does the same
arithmetic in ~15 operators per layer: one matmul for q/k/v, one for gate/up, attention by two batched matmuls
over the KV cache, fused in place where PyTorch allows. Its weights are packed once per ``Sampler.sample`` call
from the live model (LoRA deltas merged in, in the precision of the sampling): every call samples from the
current weights, never from a copy left over from an earlier step.

The prompt is still prefilled by the model's own forward (``GrowingCache``); decode steps read and extend that
cache. Anything this module does not recognize (other architectures, rotary variants it cannot call, sliding
windows) makes ``FastDecoder.build`` return None and the sampler uses the model's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor
SUPPORTED = ("llama", "mistral", "qwen2")


def effective_weight(linear: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of a linear layer as the forward uses it now: a peft LoRA layer's base weight plus the
    deltas of its active adapters (none while adapters are disabled)."""
    base = getattr(linear, "base_layer", None)
    if base is None:
        return linear.weight, linear.bias
    weight = base.weight
    if not getattr(linear, "disable_adapters", False) and not getattr(linear, "merged", False):
        for name in linear.active_adapters:
            if name in getattr(linear, "lora_A", {}):
                weight = weight + linear.get_delta_weight(name)
    return weight, base.bias


def _packer(dtype: torch.dtype, rows: int):
    """On CPU, oneDNN's linear with weights reordered once for ``rows`` rows (private PyTorch ops that inductor
    uses; on decode shapes ~10-15% faster than ``F.linear`` in bf16, ~2.5x in fp32); None if unavailable."""
    ops = getattr(torch.ops, "mkldnn", None)
    if dtype not in (torch.bfloat16, torch.float32) or ops is None or not hasattr(ops, "_reorder_linear_weight"):
        return None
    try:
        probe = torch.zeros(8, 8, dtype=dtype)
        ops._linear_pointwise(probe, ops._reorder_linear_weight(probe, rows), None, "none", [], "")
    except (RuntimeError, AttributeError):
        return None
    return lambda w: ops._reorder_linear_weight(w.contiguous(), rows)


class FastDecoder:
    """Packed weights of one model for one sampling call; ``step(tokens, positions, cache, mask)`` -> logits."""

    def __init__(self, lm, layers: list[dict], dtype: torch.dtype, pack=None):
        self.lm, self.layers, self.dtype = lm, layers, dtype
        inner = lm.model
        self.embed = inner.embed_tokens.weight
        self.norm_w, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        head_w, head_b = effective_weight(lm.get_output_embeddings())
        self.head_w = head_w.detach().to(dtype)
        self.head_b = head_b.detach().to(dtype) if head_b is not None else None
        self.linear = torch.nn.functional.linear
        if pack is not None:
            ops = torch.ops.mkldnn
            self.linear = lambda x, w, b=None: ops._linear_pointwise(x, w, b, "none", [], "")
            self.head_w = pack(self.head_w)
            for w in layers:
                for name in ("qkv", "o", "gate_up", "down"):
                    w[name] = pack(w[name])
        self.rotary = inner.rotary_emb
        cfg = lm.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5

    @classmethod
    @torch.no_grad()
    def build(cls, lm, dtype: torch.dtype, rows: int = 64, pack: bool = True) -> FastDecoder | None:
        """Pack ``lm``'s (a transformers ``*ForCausalLM``, LoRA layers possibly injected) weights in ``dtype``;
        None when its architecture is not one this step reproduces exactly."""
        cfg = lm.config
        if (
            getattr(cfg, "model_type", None) not in SUPPORTED
            or getattr(cfg, "sliding_window", None)
            and getattr(cfg, "use_sliding_window", cfg.model_type == "mistral")
        ):
            return None
        if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in ("final_logit_softcapping", "logit_scale")):
            return None
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
            return None
        layers = []
        for layer in lm.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):  # Qwen3-style norms: not this step
                return None
            qkv = [effective_weight(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj")]
            gate_up = [effective_weight(getattr(mlp, n))[0] for n in ("gate_proj", "up_proj")]
            o_w, o_b = effective_weight(attn.o_proj)
            biases = [b for _, b in qkv]
            layers.append({
                "in_norm": layer.input_layernorm.weight, "eps": layer.input_layernorm.variance_epsilon,
                "post_norm": layer.post_attention_layernorm.weight,
                "post_eps": layer.post_attention_layernorm.variance_epsilon,
                "qkv": torch.cat([w for w, _ in qkv]).to(dtype),
                "qkv_bias": torch.cat(biases).to(dtype) if all(b is not None for b in biases) else None,
                "o": o_w.to(dtype), "o_bias": o_b.to(dtype) if o_b is not None else None,
                "gate_up": torch.cat(gate_up).to(dtype),
                "down": effective_weight(mlp.down_proj)[0].to(dtype),
            })  # fmt: skip
        device = next(lm.parameters()).device.type
        return cls(lm, layers, dtype, _packer(dtype, rows) if pack and device == "cpu" else None)

    @torch.no_grad()
    def step(self, tokens: Tensor, positions: Tensor, cache, mask: Tensor | None) -> Tensor:
        """One token per row: tokens, positions ``(B,)``; ``cache`` a ``GrowingCache`` holding every earlier
        position (extended here); ``mask`` ``(B, L + 1)`` with 0 at left padding, or None -> float32 logits
        ``(B, vocab)``."""
        b, dt = tokens.shape[0], self.dtype
        x = self.embed[tokens].float()  # the residual stream stays float32, as under autocast
        cos, sin = self.rotary(x[:, None], positions[:, None])  # (B, 1, head_dim), float32
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        keep = mask.bool()[:, None, None, :] if mask is not None else None
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w["in_norm"], w["eps"]).to(dt)
            qkv = self.linear(h, w["qkv"], w["qkv_bias"])
            q = qkv[:, :q_size].view(b, self.heads, 1, self.head_dim)
            k = qkv[:, q_size : q_size + kv_size].view(b, self.kv_heads, 1, self.head_dim)
            v = qkv[:, q_size + kv_size :].view(b, self.kv_heads, 1, self.head_dim)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys, values = cache.layers[i].update(k, v)
            attn = _decode_attention(q, keys, values, keep, self.scaling)  # (B, heads * head_dim)
            x = x + self.linear(attn, w["o"], w["o_bias"]).float()
            h = _rms_norm(x, w["post_norm"], w["post_eps"]).to(dt)
            gate, up = self.linear(h, w["gate_up"]).chunk(2, dim=-1)
            x = x + self.linear(torch.nn.functional.silu(gate).mul_(up), w["down"]).float()
        h = _rms_norm(x, self.norm_w, self.norm_eps).to(dt)
        return self.linear(h, self.head_w, self.head_b).float()


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """LlamaRMSNorm on float32 ``x``: weight * x / sqrt(mean(x^2) + eps)."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x`` ``(B, heads, 1, d)`` with float32 ``cos``/``sin`` ``(B, 1, d)`` (rotate-half form),
    computed in float32 and returned in ``x``'s dtype, as transformers does under autocast."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def _decode_attention(q: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None, scaling: float) -> Tensor:
    """q ``(B, heads, 1, d)``, keys/values ``(B, kv_heads, L, d)``, keep ``(B, 1, 1, L)`` bool -> ``(B, heads * d)``."""
    from alignkit.models.attention import decode_attention_forward

    out = decode_attention_forward(q, keys, values, keep, scaling)  # (B, 1, heads, d)
    return out.reshape(q.shape[0], -1)
