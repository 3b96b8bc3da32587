"""What the routes share: the variants, the A/B router, the store, metrics, monitor and flagger, and the limits."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from alignkit.serve.ab import Router
from alignkit.serve.engine import ChatOut, ChatParams
from alignkit.serve.guard import ApiError
from alignkit.serve.prometheus import Metrics

log = logging.getLogger("alignkit.serve")
AUTO = ("", "auto", "alignkit")  # model names that mean "assign me a variant"


@dataclass
class ServeSettings:
    """Limits and options. ``api_keys``: scope -> keys (an admin key also passes chat and feedback); empty = no
    auth (the CLI allows that only on loopback)."""

    api_keys: dict[str, set[str]] = field(default_factory=dict)
    max_body_bytes: int = 1 << 20
    max_concurrency: int = 64  # chat/compare requests in flight (decoding or queued); more get 429 + Retry-After
    batching: dict = field(default_factory=dict)  # LocalVariant max_rows / max_waiting / prefill_chunk (runtime adds)
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    default_temperature: float = 0.7
    flagger: str | None = None
    device: str = "auto"  # of variants added at runtime (POST /admin/variants)
    dtype: str = "auto"
    monitor_window: int = 200
    monitor_baseline: int = 1000
    weights_sync_s: float = 2.0  # how often the A/B weights are re-read from the store (replicas on one store)


class Server:
    """What the routes share: variants, router, store, metrics, monitor, flagger and the in-flight count."""

    def __init__(self, variants: dict, store, settings: ServeSettings, weights: dict[str, float] | None = None):
        from alignkit.serve.flagger import load_flagger
        from alignkit.serve.monitor import Monitor

        self.variants, self.store, self.settings = variants, store, settings
        self.metrics = Metrics()
        recorded = store.latest_weights()
        if weights is None and recorded and set(recorded) <= set(variants):
            weights = recorded  # a restart keeps the rollout where it was
        self.router = Router(list(variants), weights)
        if recorded != self.router.weights:
            store.set_weights(self.router.weights, "startup")
        self.metrics.set_weights(self.router.weights)
        self.flagger = load_flagger(settings.flagger)
        self.monitor = Monitor(window=settings.monitor_window, baseline=settings.monitor_baseline)
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="alignkit-store")
        self.chats = 0
        self._alarms: set[str] = set()
        self._checked = 0.0

    @property
    def ready(self) -> bool:
        return all(v.ready for v in self.variants.values())

    def load(self) -> None:
        """Load every variant (in a background thread at startup; /health answers 503 until done)."""
        for v in self.variants.values():
            try:
                v.load()
            except Exception as e:  # noqa: BLE001 - logged; /health stays 503 for it
                v.error = f"{type(e).__name__}: {e}"
                log.exception("variant %s failed to load", v.name)
        self.metrics.ready.set(1.0 if self.ready else 0.0)
        log.info("ready: %s", ", ".join(f"{v.name}={v.model_id or 'FAILED'}" for v in self.variants.values()))

    async def write(self, fn, *args, **kwargs):
        """A store call in the store's thread pool; failures count in alignkit_store_errors_total -> 503."""
        from alignkit.serve.store import NotFound, StoreError

        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))
        except NotFound as e:
            raise ApiError(404, str(e), code="not_found") from None
        except ValueError as e:  # a value the store refuses (the request schemas should have caught it first)
            raise ApiError(400, str(e), code="invalid_value") from None
        except (StoreError, OSError, Exception) as e:  # noqa: BLE001 - any store failure is a 503, logged
            self.metrics.store_errors.inc()
            log.error("store error: %s: %s", type(e).__name__, e)
            raise ApiError(503, "the feedback store is unavailable; nothing was saved. Retry later") from None

    def sync_weights(self) -> dict[str, float] | None:
        """Apply the store's latest A/B weights when another replica changed them -> the new weights, or None
        when nothing changed (or they name a variant this replica does not serve: logged once, left as is)."""
        recorded = self.store.latest_weights()
        if not recorded or recorded == self.router.weights:
            return None
        full = {name: float(recorded.get(name, 0.0)) for name in self.router.order}
        if full == self.router.weights:
            return None
        unknown = sorted(set(recorded) - set(self.variants))
        if unknown:
            if unknown != getattr(self, "_unknown_logged", None):
                log.warning("the store's A/B weights name variants this replica does not serve (%s); add them here "
                            "(POST /admin/variants) to follow", ", ".join(unknown))  # fmt: skip
                self._unknown_logged = unknown
            return None
        weights = self.router.set_weights(recorded)
        self.metrics.set_weights(weights)
        log.info("A/B weights changed by another replica: %s", weights)
        return weights

    async def follow_weights(self) -> None:
        """Background task: ``sync_weights`` every ``settings.weights_sync_s`` seconds (store errors are logged)."""
        while True:
            await asyncio.sleep(self.settings.weights_sync_s)
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, self.sync_weights)
            except Exception as e:  # noqa: BLE001 - the store may be briefly away; the next round retries
                log.warning("could not re-read the A/B weights: %s: %s", type(e).__name__, e)

    def check_alarms(self, force: bool = False) -> dict:
        """Detector state into the gauges; an alarm turning on or off is logged. At most once a second."""
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return {}
        self._checked = now
        state = self.monitor.state()
        self.metrics.set_detectors(state)
        on = {name for name, s in state.items() if s.get("alarm")}
        for name in sorted(on - self._alarms):
            log.warning("failure detector %s: ALARM: %s", name, state[name].get("reason", ""))
        for name in sorted(self._alarms - on):
            log.info("failure detector %s: back to normal", name)
        self._alarms = on
        return state

    def variant_for(self, model: str | None, user: str | None):
        name = (model or "").strip()
        if name.lower() in AUTO:
            name = self.router.assign(user)
        elif name not in self.variants:
            raise ApiError(404, f"model '{model}' is not served. Fix: use one of {', '.join(self.variants)} or "
                                "'auto' for the A/B assignment", param="model", code="model_not_found")  # fmt: skip
        variant = self.variants[name]
        if not variant.ready:
            raise ApiError(503, f"variant '{name}' is still loading (or failed to load: see the server log)")
        return variant

    def params(self, max_tokens: int | None, temperature: float | None, **kw) -> ChatParams:
        max_tokens = max_tokens or min(self.settings.default_max_tokens, self.settings.max_tokens_cap)
        if max_tokens > self.settings.max_tokens_cap:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most "
                                f"{self.settings.max_tokens_cap}. Fix: ask for fewer", param="max_tokens")  # fmt: skip
        temperature = self.settings.default_temperature if temperature is None else temperature
        return ChatParams(max_tokens=max_tokens, temperature=temperature, **kw)

    def slot(self) -> None:
        if self.chats >= self.settings.max_concurrency:
            self.metrics.rejected.labels("concurrency").inc()
            raise ApiError(429, f"{self.chats} chat requests are already being answered (limit "
                                f"{self.settings.max_concurrency}). Retry after a moment", code="too_many_requests",
                           headers={"Retry-After": str(self.retry_after())})  # fmt: skip
        self.chats += 1
        self.metrics.chats_in_flight.set(self.chats)

    def can_rate(self, key: str | None) -> bool:
        """Whether ``key`` may also post feedback: an answer got with such a key (and no user id) is bound to the
        key; one got with a chat-only key is not (its rater must use another key), so the unguessable response id is
        what lets its client rate it."""
        keys = self.settings.api_keys
        return key is not None and (key in keys.get("feedback", set()) or key in keys.get("admin", set()))

    def retry_after(self) -> int:
        """Seconds after which a refused request is likely to be admitted (the slowest local queue's estimate)."""
        estimates = [v.scheduler.retry_after() for v in self.variants.values() if getattr(v, "scheduler", None)]
        return max(estimates, default=1)

    def release(self) -> None:
        self.chats -= 1
        self.metrics.chats_in_flight.set(self.chats)

    def rows(self, rid: str, variant, messages, out: ChatOut, params: ChatParams, owner, comparison=None) -> list:
        """One store row per choice (ids rid, rid-1, ...), flagged, observed by the monitor and counted; ``owner``:
        ``ab.owner_hash`` of the user (or key) the answer is for."""
        rows = []
        for k, choice in enumerate(out.choices):
            flags = self.flagger(messages, choice.text)
            rows.append({
                "id": rid if k == 0 else f"{rid}-{k}", "request_id": rid, "created": time.time(),
                "variant": variant.name, "model": out.model, "user_hash": owner,
                "messages": messages, "content": choice.text, "finish_reason": choice.finish_reason,
                "prompt_tokens": out.prompt_tokens, "completion_tokens": choice.completion_tokens,
                "latency_s": out.seconds, "ttft_s": out.ttft_s, "flags": flags, "comparison_id": comparison,
                "params": {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
                           "seed": params.seed, "stop": list(params.stop), "n": params.n},
            })  # fmt: skip
            for category in flags:
                self.metrics.safety_flags.labels(category, variant.name).inc()
        m = self.metrics
        m.prompt_tokens.labels(variant.name).inc(out.prompt_tokens)
        m.generated_tokens.labels(variant.name).inc(sum(c.completion_tokens for c in out.choices))
        if out.ttft_s is not None:
            m.ttft.labels(variant.name).observe(out.ttft_s)
        return rows

    async def commit(self, rows: list[dict]) -> None:
        await self.write(self.store.add_responses, rows)
        for row in rows:
            self.monitor.observe_response(row)
        self.check_alarms()
