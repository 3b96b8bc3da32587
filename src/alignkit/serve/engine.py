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
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

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


class OpenStream:
    """A started stream: iterate it for ``Delta``s and the final ``ChatOut``; ``cancel()`` stops its generation
    (also when it was never iterated)."""

    def __init__(self, items: AsyncIterator, cancel=lambda: None):
        self.items, self.cancel = items, cancel

    def __aiter__(self) -> AsyncIterator:
        return self.items


class BadRequest(UserError):
    """A request this variant cannot serve (too long for the context, ...): the client hears 400."""


class UpstreamError(RuntimeError):
    """The upstream server failed or is unreachable: the client hears 502."""


@dataclass
class LocalVariant:
    """A model directory, LoRA adapter directory or the embedded default (``source`` None), on CPU or GPU, served by
    a continuous-batching ``Scheduler``: ``max_rows`` rows decoded together (1 = one request at a time),
    ``max_waiting`` requests queued behind them (more hear 429 with Retry-After), prompts prefilled
    ``prefill_chunk`` tokens per decode step."""

    name: str
    source: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_rows: int = 16
    max_waiting: int = 64
    prefill_chunk: int = 256
    kind: str = "local"
    ready: bool = False
    model_id: str = ""

    def load(self) -> None:
        from alignkit.config import EMBEDDED_MODEL
        from alignkit.generation import load_sampler
        from alignkit.generation.scheduler import Scheduler

        self._ready = load_sampler(self.source, self.device, self.dtype, merge_lora=True)  # LoRA merged for serving
        self.tok, self.sampler = self._ready.tok, self._ready.sampler
        self.context = int(getattr(self._ready.model.config, "max_position_embeddings", 2048) or 2048)
        self.model_id = self.model_id or (self.source or EMBEDDED_MODEL)
        self.scheduler = Scheduler(self._ready, self.max_rows, self.max_waiting, self.prefill_chunk)
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

    async def chat(self, messages: list[dict], params: ChatParams) -> ChatOut:
        out = None
        async for item in self.stream(messages, params):
            out = item
        return out

    async def stream(self, messages: list[dict], params: ChatParams) -> AsyncIterator[Delta | ChatOut]:
        async for item in await self.open_stream(messages, params):
            yield item

    async def open_stream(self, messages: list[dict], params: ChatParams) -> OpenStream:
        """Queue the request now (BadRequest, or QueueFull when the queue is full, raise here, before a response
        starts) -> its stream: text deltas as tokens are drawn, then the ChatOut. Text that may be the start of a
        stop string (or half a UTF-8 character) is held back until it is known. Leaving the stream early (the
        client disconnected) or ``cancel()`` cancels the request: its rows leave the batch at the next step."""
        from alignkit.generation.decode import Request
        from alignkit.generation.params import SamplingParams

        t0 = time.perf_counter()
        ids = await asyncio.to_thread(self.prompt_ids, messages)
        self._check(ids, params)
        sampling = SamplingParams(
            n=params.n, max_new_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            stop=params.stop,
        )  # fmt: skip
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass

        request = Request(ids, sampling, seed, on_token=lambda k, token: put((k, token)))
        self.scheduler.submit(request, on_done=lambda r: put(None))
        return OpenStream(self._deltas(request, queue, len(ids), params, t0), request.cancel)

    async def _deltas(self, request, queue: asyncio.Queue, prompt_tokens: int, params: ChatParams, t0: float):
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
        except BaseException:
            request.cancel()  # the client left: its rows leave the batch at the next step
            raise
        if request.error is not None:
            raise RuntimeError(f"variant {self.name}: generation failed: {request.error}")
        group = request.completions(self.tok)
        choices = [ChoiceOut(c.text, FINISH.get(c.finish_reason, "stop"), len(c.token_ids)) for c in group]
        for k, choice in enumerate(choices):  # the rest, cut before a stop string as the sampler cut it
            if len(choice.text) > sent.get(k, 0):
                yield Delta(k, choice.text[sent.get(k, 0) :])
        ttft = request.first_token_at - t0 if request.first_token_at is not None else None
        yield ChatOut(choices, prompt_tokens, self.model_id, ttft, time.perf_counter() - t0)

    async def aclose(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            await asyncio.to_thread(scheduler.close)


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

    async def open_stream(self, messages: list[dict], params: ChatParams) -> OpenStream:
        return OpenStream(self.stream(messages, params))

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


def make_variant(name: str, source: str | None, device: str = "auto", dtype: str = "auto", **batching):
    """``source``: None (the embedded default), a model or adapter directory, or an http(s) base URL of an
    OpenAI-compatible server, optionally ``URL#MODEL`` to pick one of its models (its key, if it needs one, from
    ALIGNKIT_UPSTREAM_API_KEY). ``batching``: ``LocalVariant``'s max_rows / max_waiting / prefill_chunk."""
    if source and source.startswith(("http://", "https://")):
        url, _, model = source.partition("#")
        key = os.environ.get("ALIGNKIT_UPSTREAM_API_KEY") or None
        return UpstreamVariant(name, url.rstrip("/"), model or None, key)
    return LocalVariant(name, source, device, dtype, **batching)
