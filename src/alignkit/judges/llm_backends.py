"""Where an LLM judge's model runs: in this process (``LocalBackend``) or behind an OpenAI-compatible chat endpoint
(``HTTPBackend``, the official ``openai`` client). Both answer two questions about a list of chat conversations:

- ``label_logprobs(conversations, prefix, labels)``: the log-probability of each label (logsumexp over its token
  variants, e.g. "A" and " A") as the next token after the assistant turn opened with ``prefix``; locally from the
  full next-token distribution of one batched forward pass, over HTTP from the first token's ``top_logprobs``;
- ``generate(conversations, max_new_tokens)``: the greedy answer text.

Each row comes back as ``(logps or text or None, info)``; ``info`` says why a row has no answer (too long for the
model, the endpoint returned no logprobs or refused the request).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from alignkit.errors import UserError

TOP_LOGPROBS = 20  # the most OpenAI-compatible endpoints return


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


class LocalBackend:
    """A causal LM loaded with ``alignkit.models`` (local dir, hub id or the embedded default), fp32."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 8):
        from alignkit.generation import load_sampler

        ready = load_sampler(model, device, dtype="fp32", max_rows=batch_size)
        self.device, self.tok, self.model, self._sampler = ready.device, ready.tok, ready.model, ready.sampler
        hf = self.tok.hf
        self.batch_size = batch_size
        self.specials = tuple(str(t) for t in hf.all_special_tokens) + tuple(hf.get_added_vocab())
        self.max_length = getattr(self.model.config, "max_position_embeddings", None)
        self._label_ids: dict[tuple, list[int]] = {}

    def render(self, messages: list[dict], prefix: str | None = None) -> list[int]:
        """Token ids of ``messages`` through the chat template, ending with the assistant turn opened (and
        continued with ``prefix`` when given); a tokenizer without a template gets "Role: text" turns."""
        hf = self.tok.hf
        turn = [{"role": "assistant", "content": prefix}] if prefix else []
        if getattr(hf, "chat_template", None):
            for msgs in (messages, _no_system(messages)):
                try:
                    opened = {"add_generation_prompt": not prefix, "continue_final_message": bool(prefix)}
                    text = hf.apply_chat_template(msgs + turn, tokenize=False, **opened)
                    break
                except Exception as e:  # a template without a system role raises (jinja2 TemplateError)
                    error = e
            else:
                raise UserError(f"the judge model's chat template failed: {error}. Fix: use a chat model") from None
        else:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
            text += f" {prefix}" if prefix else " "
        return self.tok.with_bos(self.tok.encode(text))

    def label_ids(self, prefix: str, variants: tuple[str, ...]) -> list[int]:
        """The single-token ids of a label's spellings (and of the label as it tokenizes right after ``prefix``)."""
        key = (prefix, variants)
        if key not in self._label_ids:
            ids = {e[0] for v in variants if len(e := self.tok.encode(v)) == 1}
            before, after = self.tok.encode(prefix), self.tok.encode(prefix + variants[0])
            if after[: len(before)] == before and len(after) == len(before) + 1:
                ids.add(after[-1])
            if not ids:
                raise UserError(f"the judge tokenizer has no single token for {variants[0]!r}. Fix: use mode=generate")
            self._label_ids[key] = sorted(ids)
        return self._label_ids[key]

    def _too_long(self, ids: list[int], extra: int = 0) -> dict | None:
        if self.max_length and len(ids) + extra > self.max_length:
            return {"error": f"the judge prompt has {len(ids)} tokens, over the model's {self.max_length}"}
        return None

    @torch.no_grad()
    def label_logprobs(self, conversations: list[list[dict]], prefix: str, labels: dict[str, tuple[str, ...]]):
        """Per conversation ``({label: logp}, info)``: one forward pass per batch of left-padded rows; the mask
        comes from the lengths (the pad id is also EOS), positions count real tokens only."""
        ids = [self.render(m, prefix) for m in conversations]
        label_ids = {k: torch.tensor(self.label_ids(prefix, v), device=self.device) for k, v in labels.items()}
        out: list = [None] * len(ids)
        runnable = []
        for i, row in enumerate(ids):
            problem = self._too_long(row)
            out[i] = (None, problem) if problem else None
            if not problem:
                runnable.append(i)
        runnable.sort(key=lambda i: len(ids[i]))
        for s in range(0, len(runnable), self.batch_size):
            chunk = runnable[s : s + self.batch_size]
            width = max(len(ids[i]) for i in chunk)
            batch = torch.tensor([[self.tok.pad_id] * (width - len(ids[i])) + ids[i] for i in chunk])
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=batch.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=False,
                logits_to_keep=1,
            ).logits[:, -1]
            logp = logits.float().log_softmax(-1)  # (B, vocab)
            for row, i in enumerate(chunk):
                out[i] = ({k: float(logp[row, t].logsumexp(0)) for k, t in label_ids.items()}, {})
        return out

    def generate(self, conversations: list[list[dict]], max_new_tokens: int):
        """Per conversation ``(greedy answer text, info)``, with alignkit's sampler."""
        from alignkit.generation.sampler import SamplingParams

        ids = [self.render(m) for m in conversations]
        out: list = [(None, p) if (p := self._too_long(row, max_new_tokens)) else None for row in ids]
        todo = [i for i, r in enumerate(out) if r is None]
        params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0)
        for i, completions in zip(todo, self._sampler.sample([ids[i] for i in todo], params, [0] * len(todo))):
            out[i] = (completions[0].text, {})
        return out

    def close(self) -> None:
        pass


def _no_system(messages: list[dict]) -> list[dict]:
    """The system message merged into the first user message (for templates without a system role)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    rest = [dict(m) for m in messages[1:]]
    rest[0]["content"] = messages[0]["content"] + "\n\n" + rest[0]["content"]
    return rest


class HTTPBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, llama.cpp server, OpenAI...), called with
    up to ``concurrency`` requests in flight. The logprobs request opens the assistant turn with the prefix
    (``continue_final_message``, as vLLM names it); an endpoint that refuses that, or returns no logprobs, is
    answered by generation for that call."""

    specials: tuple[str, ...] = ()

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout: float, concurrency: int = 8):
        self.base_url, self.model, self.timeout, self.concurrency = base_url, model, timeout, concurrency
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=1)
        return self._client

    def _create(self, **request):
        """One chat completion; errors that concern every call become one ``UserError``, a refused request (400,
        422) comes back as the exception."""
        import openai

        try:
            return self.client.chat.completions.create(model=self.model, **request)
        except openai.APIConnectionError as e:  # includes timeouts
            raise UserError(
                f"the LLM judge could not reach {self.base_url} ({type(e).__name__}: {e}, timeout {self.timeout}s). "
                f"Fix: start the OpenAI-compatible server (e.g. `vllm serve MODEL`), or correct judge.base_url "
                "(usually ending in /v1) or raise judge.timeout"
            ) from None
        except openai.AuthenticationError as e:
            raise UserError(
                f"{self.base_url} refused the API key ({e}). Fix: set judge.api_key or OPENAI_API_KEY"
            ) from None
        except openai.NotFoundError as e:
            raise UserError(
                f"{self.base_url} has no chat completions for model {self.model!r} ({e}). Fix: set judge.model to a "
                "model the server lists at /v1/models, and judge.base_url to its /v1 root"
            ) from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            return e

    def _map(self, fn, rows: list):
        if len(rows) <= 1:
            return [fn(r) for r in rows]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(rows))) as pool:
            return list(pool.map(fn, rows))

    def label_logprobs(self, conversations: list[list[dict]], prefix: str, labels: dict[str, tuple[str, ...]]):
        """Per conversation ``({label: logp}, info)`` from the first token's top log-probs; None logps with
        ``info["fallback"]`` where the endpoint gave none. A label missing from the top ones is bounded by the
        smallest listed (``info["bounded"]``); none present: unjudged."""
        spellings = {k: {s.strip() for s in v} for k, v in labels.items()}

        def one(messages):
            response = self._create(
                messages=messages + [{"role": "assistant", "content": prefix}], max_tokens=1, temperature=0.0,
                logprobs=True, top_logprobs=TOP_LOGPROBS,
                extra_body={"continue_final_message": True, "add_generation_prompt": False},
            )  # fmt: skip
            if isinstance(response, Exception):
                return None, {"fallback": f"the endpoint refused the logprobs request: {response}"}
            content = getattr(response.choices[0].logprobs, "content", None) if response.choices else None
            if not content or not content[0].top_logprobs:
                return None, {"fallback": "the endpoint returned no logprobs"}
            top = content[0].top_logprobs
            found = {k: [t.logprob for t in top if t.token.strip() in s] for k, s in spellings.items()}
            if not any(found.values()):
                return None, {"error": f"no verdict token among the top {len(top)} log-probs", "top": top[0].token}
            floor = min(t.logprob for t in top)
            info = {"bounded": [k for k, v in found.items() if not v]} if not all(found.values()) else {}
            return {k: _logsumexp(v) if v else floor for k, v in found.items()}, info

        return self._map(one, conversations)

    def generate(self, conversations: list[list[dict]], max_new_tokens: int):
        """Per conversation ``(greedy answer text, info)``; a refused request: ``(None, {"error": ...})``."""

        def one(messages):
            response = self._create(messages=messages, max_tokens=max_new_tokens, temperature=0.0)
            if isinstance(response, Exception):
                return None, {"error": f"the endpoint refused the request: {response}"}
            return (response.choices[0].message.content or "") if response.choices else "", {}

        return self._map(one, conversations)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
