"""Batched generation with left padding; chat prompts go through the model's chat template."""

from __future__ import annotations

import torch

from alignkit.data.formats import Content
from alignkit.data.tokenize import Tokenizer


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[Content],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int | None = 0,
    chat: bool = True,
) -> list[str]:
    """Completions for ``prompts`` (text, or lists of messages). ``temperature=0`` is greedy decoding.

    With ``chat=True`` a text prompt is sent as one user message through the chat template (if the tokenizer
    has one). Returns the decoded completions without the prompt and special tokens.
    """
    tok = Tokenizer(tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    texts = []
    for p in prompts:
        if isinstance(p, str) and chat and has_template:
            p = ({"role": "user", "content": p},)
        texts.append(tok.render_prompt(tuple(p) if isinstance(p, list) else p))
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for s in range(0, len(texts), batch_size):
        rows = [([tok.auto_bos] if tok.auto_bos is not None else []) + tok.encode(t) for t in texts[s : s + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows], device=device)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_id,
            eos_token_id=tok.eos_id,
            **sampling,
        )
        outputs += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return [o.strip() for o in outputs]
