"""A served variant: a local model sampled with alignkit's Sampler (streamed token by token), or an upstream
OpenAI-compatible server (vLLM, llama.cpp, TGI, a hosted API, another alignkit) proxied by its base URL.

Both answer ``chat(messages, params) -> ChatOut`` and ``stream(messages, params)``, an async iterator of
``Delta(index, text)`` ending with one ``ChatOut``. A LoRA adapter is merged into its base at load (deployment
form: no adapter overhead per token).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from alignkit.errors import UserError

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # alignkit's finish reasons -> OpenAI's


@dataclass(frozen=True)
class ChatParams:
    """What a chat request may set. ``seed`` None = a fresh random seed per request."""

    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class ChoiceOut:
    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass
class ChatOut:
    choices: list[ChoiceOut]
    prompt_tokens: int
    model: str
    ttft_s: float | None = None  # seconds from the request to its first generated token
    seconds: float = 0.0


@dataclass
class Delta:
    index: int
    text: str


class BadRequest(UserError):
    """A request this variant cannot serve (too long for the context, ...): the client hears 400."""


class UpstreamError(RuntimeError):
    """The upstream server failed or is unreachable: the client hears 502."""


class _Cancelled(Exception):
    pass


@dataclass
class LocalVariant:
    """A model directory, LoRA adapter directory or the embedded default (``source`` None), on CPU or GPU."""

    name: str
    source: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    kind: str = "local"
    ready: bool = False
    model_id: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self) -> None:
        from alignkit.config import EMBEDDED_MODEL
        from alignkit.generation import load_sampler

        self._ready = load_sampler(self.source, self.device, self.dtype, merge_lora=True)  # LoRA merged for serving
        self.tok, self.sampler = self._ready.tok, self._ready.sampler
        self.context = int(getattr(self._ready.model.config, "max_position_embeddings", 2048) or 2048)
        self.model_id = self.model_id or (self.source or EMBEDDED_MODEL)
        self.ready = True

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.sampler.prompt_ids(tuple(messages))

    def precheck(self, messages: list[dict], params: ChatParams) -> None:
        """Raise BadRequest now (before a stream starts) when the request cannot fit the context."""
        self._check(self.prompt_ids(messages), params)

    def _check(self, ids: list[int], params: ChatParams) -> None:
        if len(ids) + params.max_tokens > self.context:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}: more than the model's "
                f"context of {self.context}. Fix: shorten the conversation or lower max_tokens"
            )

    def _run(self, messages: list[dict], params: ChatParams, on_token=None) -> ChatOut:
        """Blocking generation (one at a time per variant: the model is shared)."""

        from alignkit.generation.sampler import SamplingParams

        t0 = time.perf_counter()
        ids = self.prompt_ids(messages)
        self._check(ids, params)
        sampling = SamplingParams(
            n=params.n, max_new_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            stop=params.stop,
        )  # fmt: skip
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        first: list[float] = []

        def hook(p: int, k: int, token: int) -> None:
            if not first:
                first.append(time.perf_counter() - t0)
            if on_token is not None:
                on_token(k, token)

        with self._lock, self._ready.autocast():
            (group,) = self.sampler.sample([ids], sampling, [seed], on_token=hook)
        choices = [ChoiceOut(c.text, FINISH[c.finish_reason], len(c.token_ids)) for c in group]
        return ChatOut(choices, len(ids), self.model_id, first[0] if first else None, time.perf_counter() - t0)

    async def chat(self, messages: list[dict], params: ChatParams) -> ChatOut:
        return await asyncio.to_thread(self._run, messages, params)

    async def stream(self, messages: list[dict], params: ChatParams) -> AsyncIterator[Delta | ChatOut]:
        """Text deltas as tokens are drawn; text that may be the start of a stop string (or half a UTF-8
        character) is held back until it is known; the last item is the ChatOut."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def on_token(k: int, token: int) -> None:
            if cancelled.is_set():
                raise _Cancelled
            loop.call_soon_threadsafe(queue.put_nowait, (k, token))

        async def run() -> ChatOut:
            try:
                return await asyncio.to_thread(self._run, messages, params, on_token)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = asyncio.ensure_future(run())
        tokens: dict[int, list[int]] = {}
        sent: dict[int, int] = {}
        hold = max((len(s) for s in params.stop), default=1) - 1
        try:
            while (item := await queue.get()) is not None:
                k, token = item
                tokens.setdefault(k, []).append(token)
                text = self.tok.hf.decode(tokens[k], skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue
                safe = len(text) - hold
                if params.stop:
                    cut = min((text.find(s) for s in params.stop if s in text), default=-1)
                    safe = min(safe, cut) if cut >= 0 else safe
                if safe > sent.get(k, 0):
                    yield Delta(k, text[sent.get(k, 0) : safe])
                    sent[k] = safe
            out = await task
        except BaseException:
            cancelled.set()  # the client left: the sampler stops at its next token
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" log
            raise
        for k, choice in enumerate(out.choices):  # the rest, cut before a stop string as the sampler cut it
            if len(choice.text) > sent.get(k, 0):
                yield Delta(k, choice.text[sent.get(k, 0) :])
        yield out

    async def aclose(self) -> None:
        return None


@dataclass
class UpstreamVariant:
    """An OpenAI-compatible server at ``base_url`` (e.g. http://127.0.0.1:8000/v1); ``model`` None = the first
    model it lists; ``api_key`` for hosted APIs."""

    name: str
    base_url: str
    model: str | None = None
    api_key: str | None = None
    timeout: float = 120.0
    kind: str = "upstream"
    ready: bool = False
    model_id: str = ""

    def load(self) -> None:
        import openai

        self.client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key or "none", timeout=self.timeout, max_retries=0
        )
        if self.model is None:
            sync = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "none", timeout=10, max_retries=2)
            try:
                listed = sync.models.list().data
            except openai.OpenAIError as e:
                raise UpstreamError(f"upstream {self.base_url}: could not list models ({e})") from None
            if not listed:
                raise UpstreamError(f"upstream {self.base_url} serves no model. Fix: name one with model=")
            self.model = listed[0].id
        self.model_id = self.model
        self.ready = True

    def precheck(self, messages: list[dict], params: ChatParams) -> None:
        return None  # the upstream server checks its own context

    def _args(self, messages: list[dict], params: ChatParams) -> dict:
        args = dict(
            model=self.model, messages=messages, n=params.n, max_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p,
        )  # fmt: skip
        if params.stop:
            args["stop"] = list(params.stop)
        if params.seed is not None:
            args["seed"] = params.seed
        return args

    def _error(self, e: Exception) -> Exception:
        import openai

        if isinstance(e, openai.BadRequestError):
            return BadRequest(f"upstream {self.base_url} refused the request: {e.message}")
        return UpstreamError(f"upstream {self.base_url}: {type(e).__name__}: {e}")

    async def chat(self, messages: list[dict], params: ChatParams) -> ChatOut:
        import openai

        t0 = time.perf_counter()
        try:
            r = await self.client.chat.completions.create(**self._args(messages, params))
        except openai.OpenAIError as e:
            raise self._error(e) from None
        usage = r.usage
        choices = [
            ChoiceOut(c.message.content or "", c.finish_reason or "stop", 0) for c in sorted(r.choices, key=_index)
        ]
        if usage is not None and len(choices) == 1:
            choices[0].completion_tokens = usage.completion_tokens
        seconds = time.perf_counter() - t0
        return ChatOut(choices, usage.prompt_tokens if usage else 0, r.model or self.model_id, None, seconds)

    async def stream(self, messages: list[dict], params: ChatParams) -> AsyncIterator[Delta | ChatOut]:
        import openai

        t0 = time.perf_counter()
        texts: dict[int, list[str]] = {}
        finish: dict[int, str] = {}
        first, prompt_tokens, completion_tokens = None, 0, 0
        try:
            response = await self.client.chat.completions.create(
                **self._args(messages, params), stream=True, stream_options={"include_usage": True}
            )
            async for chunk in response:
                if chunk.usage is not None:
                    prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                for c in chunk.choices:
                    if c.delta is not None and c.delta.content:
                        first = first if first is not None else time.perf_counter() - t0
                        texts.setdefault(c.index, []).append(c.delta.content)
                        yield Delta(c.index, c.delta.content)
                    if c.finish_reason:
                        finish[c.index] = c.finish_reason
        except openai.OpenAIError as e:
            raise self._error(e) from None
        choices = [ChoiceOut("".join(texts.get(k, [])), finish.get(k, "stop"), 0) for k in range(params.n)]
        if len(choices) == 1:
            choices[0].completion_tokens = completion_tokens
        yield ChatOut(choices, prompt_tokens, self.model_id, first, time.perf_counter() - t0)

    async def aclose(self) -> None:
        if getattr(self, "client", None) is not None:
            await self.client.close()


def _index(choice) -> int:
    return choice.index


def make_variant(name: str, source: str | None, device: str = "auto", dtype: str = "auto"):
    """``source``: None (the embedded default), a model or adapter directory, or an http(s) base URL of an
    OpenAI-compatible server, optionally ``URL#MODEL`` to pick one of its models (its key, if it needs one, from
    ALIGNKIT_UPSTREAM_API_KEY)."""
    if source and source.startswith(("http://", "https://")):
        url, _, model = source.partition("#")
        key = os.environ.get("ALIGNKIT_UPSTREAM_API_KEY") or None
        return UpstreamVariant(name, url.rstrip("/"), model or None, key)
    return LocalVariant(name, source, device, dtype)
