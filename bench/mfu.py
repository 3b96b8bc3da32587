"""Model FLOPs utilization (MFU) helpers: this machine's measured matmul peak and a DPO step's model FLOPs.

    .venv/bin/python bench/mfu.py [--sizes 1024 2048 3072] [--repeats 5]

prints the measured peak (GFLOP/s) of ``torch.matmul`` on square matrices, fp32 and bf16, with the threads torch
uses by default (``torch.get_num_threads()``), best over sizes and repeats. That measured peak, not a datasheet
number, is the MFU denominator: MFU = model FLOPs per step / seconds per step / measured peak of the precision the
step runs in (bf16 autocast -> the bf16 peak; fp32 -> the fp32 peak).

Model FLOPs of one DPO optimizer step (the standard 6N estimate, split so that the LM head is counted only where a
DPO step needs logits: at the scored completion positions). Per pair, ``P`` prompt, ``C`` chosen and ``R`` rejected
tokens; the layout is what the trainer actually runs:

- plain (TRL; alignkit with train.prefix_sharing=false): two rows, prompt+chosen and prompt+rejected:
  ``T = 2P + C + R`` tokens through the decoder, attention ``A = (P + C)^2 + (P + R)^2``.
- shared (alignkit's prefix sharing): one row prompt+chosen+rejected, the prompt encoded once: ``T = P + C + R``,
  ``A = (P + C)^2 + R * (P + R)`` (each token times the context it is allowed to see).

With ``N`` = decoder parameters in matmuls (embedding lookup and LM head excluded), ``H`` = LM head parameters
(``vocab x d_model``, a matmul even when tied to the embeddings), ``S = C + R`` scored tokens and
``W = n_layers * n_heads * head_dim``:

- policy, full fine-tuning: ``6 * N * T + 6 * H * S + 12 * W * A`` (forward 2, backward 4: activation and weight
  gradients; attention is PaLM's 12*L*H*Q per token and context position, no causal halving).
- policy, LoRA: ``4 * N * T + 4 * H * S + 12 * W * A + 6 * N_lora * T`` (frozen weights: activation gradients only).
- a live reference model adds its forward ``2 * N * T + 2 * H * S + 4 * W * A``; with precomputed reference
  log-probs nothing is added per step (that forward runs once before training and is reported as setup time).

So MFU counts the work each trainer's layout needs; extra work an implementation chooses to do (LM head over prompt
and padding positions, recomputation under gradient checkpointing, attention over masked-out positions, metrics) is
not counted. Prefix sharing lowers the FLOPs needed per pair: compare libraries by pairs/s or tokens/s; MFU says
how well each uses the machine for the work its layout requires.
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_peak_gflops(dtype: torch.dtype, sizes=(1024, 2048, 3072), repeats: int = 5) -> float:
    """Best GFLOP/s of ``a @ b`` (square, ``2 n^3`` FLOPs) over ``sizes`` x ``repeats``, after one warm-up each."""
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        torch.matmul(a, b)  # warm-up: oneDNN / BLAS kernel selection, page faults
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def measure_peaks(sizes=(1024, 2048, 3072), repeats: int = 5) -> dict:
    """``{"fp32": GFLOP/s, "bf16": GFLOP/s, "threads": n}`` measured now, in this process."""
    return {
        "fp32": matmul_peak_gflops(torch.float32, sizes, repeats),
        "bf16": matmul_peak_gflops(torch.bfloat16, sizes, repeats),
        "threads": torch.get_num_threads(),
        "sizes": list(sizes),
        "repeats": repeats,
    }


def model_shape(model) -> dict:
    """What the FLOP estimate needs from a (possibly PEFT-wrapped) causal LM: matmul params, LoRA params, layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    tied = emb.data_ptr() == head.data_ptr()
    # named_parameters() lists a tied weight once; untied, the lookup table is no matmul
    body = total - head.numel() if tied else total - emb.numel() - head.numel()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {
        "body_params": int(body),
        "head_params": int(head.numel()),
        "lora_params": int(lora),
        "n_layers": int(cfg.num_hidden_layers),
        "attn_width": int(heads * head_dim),
        "tied_embeddings": bool(tied),
    }


def dpo_step_flops(shape: dict, pairs: list[list[int]], layout: str, lora: bool, live_reference: bool) -> float:
    """Model FLOPs of one DPO optimizer step over ``pairs`` ``[[P, C, R], ...]`` in ``layout``
    (plain | shared | packed)."""
    n, h, w = shape["body_params"], shape["head_params"], shape["n_layers"] * shape["attn_width"]
    if layout in ("shared", "packed"):  # packed: the same pairs back to back, no padding
        tokens = sum(p + c + r for p, c, r in pairs)
        attn = sum((p + c) ** 2 + r * (p + r) for p, c, r in pairs)
    else:
        tokens = sum(2 * p + c + r for p, c, r in pairs)
        attn = sum((p + c) ** 2 + (p + r) ** 2 for p, c, r in pairs)
    scored = sum(c + r - (2 if p == 0 else 0) for p, c, r in pairs)  # without a prompt, token 0 is not scored
    if lora:
        flops = 4 * n * tokens + 4 * h * scored + 6 * shape["lora_params"] * tokens + 12 * w * attn
    else:
        flops = 6 * n * tokens + 6 * h * scored + 12 * w * attn
    if live_reference:
        flops += 2 * n * tokens + 2 * h * scored + 4 * w * attn
    return float(flops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    peaks = measure_peaks(tuple(args.sizes), args.repeats)
    print(
        f"matmul peak with {peaks['threads']} threads: fp32 {peaks['fp32']:.1f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.1f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
