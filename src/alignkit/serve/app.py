"""The FastAPI app: OpenAI-compatible chat, feedback, side-by-side comparisons, A/B weights, metrics, the page.

    POST /v1/chat/completions  chat (JSON, or SSE chunks ending in [DONE] with "stream": true)   scope chat
    GET  /v1/models            the served variants                                                scope chat
    POST /v1/feedback          thumbs up/down on a response id (idempotent by feedback_id)        scope feedback
    POST /v1/compare           two variants answer one prompt, shown anonymously left/right       scope chat
    POST /v1/compare/{id}/vote left | right | tie | both_bad                                      scope feedback
    GET|PUT /admin/weights     A/B weights (recorded in the store)       GET /admin/detectors     scope admin
    GET  /health  (503 until every variant is loaded)    GET /metrics (Prometheus)    GET / (the web page)
    GET  /rollout (the decisions of `alignkit loop`, newest first: a status page)

Every failure answers in OpenAI's error shape, never with a stack trace; 2xx for a write only after its row is
committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignkit.errors import UserError
from alignkit.generation.scheduler import QueueFull
from alignkit.serve.ab import owner_hash
from alignkit.serve.engine import BadRequest, ChatOut, ChatParams, Delta, OpenStream, UpstreamError
from alignkit.serve.guard import ApiError, Guard
from alignkit.serve.schemas import (
    ChatRequest,
    CompareRequest,
    FeedbackRequest,
    VariantRequest,
    VoteRequest,
    WeightsRequest,
    error_body,
)
from alignkit.serve.server import Server, ServeSettings  # noqa: F401 (ServeSettings: re-exported for callers)

log = logging.getLogger("alignkit.serve")


def _completion_body(rid: str, created: int, model: str, out: ChatOut, variant: str) -> dict:
    choices = [
        {"index": k, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
         "logprobs": None, "response_id": rid if k == 0 else f"{rid}-{k}"}
        for k, c in enumerate(out.choices)
    ]  # fmt: skip
    generated = sum(c.completion_tokens for c in out.choices)
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
        "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": generated,
                  "total_tokens": out.prompt_tokens + generated},
        "system_fingerprint": f"alignkit-{variant}",
    }  # fmt: skip


def _chunk(rid: str, created: int, model: str, choices: list, usage=None) -> str:
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def create_app(server: Server, load_in_background: bool = True) -> FastAPI:
    """The app over ``server``; its variants load at startup (in a thread, so /health can answer 503 first)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if load_in_background:
            threading.Thread(target=server.load, name="alignkit-load", daemon=True).start()
        else:
            server.load()
        follow = asyncio.ensure_future(server.follow_weights()) if server.settings.weights_sync_s > 0 else None
        yield
        if follow is not None:
            follow.cancel()
        for v in server.variants.values():
            await v.aclose()
        server.pool.shutdown(wait=True)

    app = FastAPI(title="alignkit serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    def scope(name: str):
        keys = server.settings.api_keys

        def check(request: Request) -> str | None:
            if not any(keys.values()):
                return None
            auth = request.headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not key:
                raise ApiError(401, "missing API key. Fix: send 'Authorization: Bearer KEY'", code="invalid_api_key")
            allowed = keys.get(name, set()) | keys.get("admin", set())
            if any(secrets.compare_digest(key, k) for k in allowed):
                return key
            if any(secrets.compare_digest(key, k) for ks in keys.values() for k in ks):
                raise ApiError(403, f"this API key lacks the '{name}' scope", code="insufficient_scope")
            raise ApiError(401, "invalid API key", code="invalid_api_key")

        return Depends(check)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse(error_body(e.status, e.message, e.param, e.code), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{where or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(error_body(422, msg, param=where or None, code="invalid_value"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        msg = "no such route" if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(e.status_code, msg), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s", ref, request.url.path)
        return JSONResponse(error_body(500, f"internal error (reference {ref}); see the server log"), 500)

    @app.get("/health")
    async def health():
        states = {v.name: _state(v) for v in server.variants.values()}
        return JSONResponse({"status": "ok" if server.ready else "loading", "variants": states},
                            status_code=200 if server.ready else 503)  # fmt: skip

    @app.get("/metrics")
    async def metrics():
        server.check_alarms(force=True)
        try:
            server.metrics.set_rollout(await server.write(server.store.rollout_summary))
        except ApiError:
            pass  # the store is away: the other metrics still answer (alignkit_store_errors_total counts it)
        for v in server.variants.values():
            if getattr(v, "scheduler", None) is not None:
                server.metrics.decode_rows.labels(v.name).set(v.scheduler.running)
                server.metrics.queue_waiting.labels(v.name).set(v.scheduler.waiting)
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(_=scope("chat")):
        data = [{"id": v.name, "object": "model", "created": 0, "owned_by": "alignkit", "root": v.model_id or None}
                for v in server.variants.values()]  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request, key=scope("chat")):
        user = req.user or request.headers.get("x-user-id")
        owner = owner_hash(user, key if server.can_rate(key) else None)
        variant = server.variant_for(req.model, user)
        top_p = 1.0 if req.top_p is None else req.top_p
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = server.params(
            max_tokens, req.temperature, n=req.n, top_p=top_p, stop=tuple(req.stop or ()), seed=req.seed
        )
        messages = req.plain_messages()
        try:
            variant.precheck(messages, params)
        except BadRequest as e:
            raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        headers = {"x-alignkit-variant": variant.name, "x-request-id": rid}
        server.slot()
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            try:
                items = await _open(variant, messages, params, server.metrics)
            except BaseException:
                server.release()
                raise
            gen = _stream(server, variant, items, messages, params, rid, created, owner, usage)
            return StreamingResponse(gen, media_type="text/event-stream", headers=headers)
        try:
            out = await _generate(variant, messages, params, server.metrics)
            await server.commit(server.rows(rid, variant, messages, out, params, owner))
        finally:
            server.release()
        return JSONResponse(_completion_body(rid, created, variant.name, out, variant.name), headers=headers)

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest, request: Request, key=scope("feedback")):
        user = req.user or request.headers.get("x-user-id")
        owner = owner_hash(user, key)
        response = await server.write(server.store.get_response, req.response_id)
        if response is None:
            raise ApiError(404, f"no response '{req.response_id}'", param="response_id", code="not_found")
        _check_owner(response.get("user_hash"), owner, "response")
        row, created = await server.write(server.store.add_feedback, req.response_id, req.value, req.comment,
                                          req.feedback_id, owner)  # fmt: skip
        variant = (row.get("snapshot") or {}).get("variant", "unknown")
        if created:
            server.metrics.feedback.labels("thumbs", req.value, variant).inc()
            if "replaced" not in row:  # a changed rating is not a new observation for the detectors
                server.monitor.observe_feedback(req.value, variant)
            server.check_alarms()
        body = {"id": row["id"], "object": "feedback", "response_id": req.response_id, "value": row["value"],
                "stored": created, "replaced": row.get("replaced")}  # fmt: skip
        return JSONResponse(body, status_code=201 if created else 200)

    @app.post("/v1/compare")
    async def compare(req: CompareRequest, request: Request, key=scope("chat")):
        user = req.user or request.headers.get("x-user-id")
        owner = owner_hash(user, key if server.can_rate(key) else None)
        a = server.variant_for(None, user)
        b_name = server.router.other(a.name)
        if b_name is None:
            raise ApiError(400, "compare needs two variants and one is served. Fix: start with two --variant")
        b = server.variant_for(b_name, user)
        params = server.params(req.max_tokens, req.temperature, seed=req.seed)
        messages = req.plain_messages()
        cid = f"cmp-{uuid.uuid4().hex[:24]}"
        server.slot()
        try:
            out_a, out_b = await asyncio.gather(_generate(a, messages, params), _generate(b, messages, params))
            ra = server.rows(f"chatcmpl-{uuid.uuid4().hex[:24]}", a, messages, out_a, params, owner, cid)
            rb = server.rows(f"chatcmpl-{uuid.uuid4().hex[:24]}", b, messages, out_b, params, owner, cid)
            await server.commit(ra + rb)
        finally:
            server.release()
        a_shown = secrets.choice(("left", "right"))
        await server.write(server.store.add_comparison, {
            "id": cid, "created": time.time(), "user_hash": owner, "messages": messages,
            "response_a": ra[0]["id"], "response_b": rb[0]["id"], "variant_a": a.name, "variant_b": b.name,
            "a_shown": a_shown,
        })  # fmt: skip
        sides = {"left": out_a, "right": out_b} if a_shown == "left" else {"left": out_b, "right": out_a}
        return {"id": cid, "object": "comparison", **{s: {"content": o.choices[0].text} for s, o in sides.items()}}

    @app.post("/v1/compare/{cid}/vote")
    async def vote(cid: str, req: VoteRequest, request: Request, key=scope("feedback")):
        user = req.user or request.headers.get("x-user-id")
        owner = owner_hash(user, key)
        c = await server.write(server.store.get_comparison, cid)
        if c is None:
            raise ApiError(404, f"no comparison '{cid}'", param="id", code="not_found")
        _check_owner(c.get("user_hash"), owner, "comparison")
        shown_a = c["a_shown"]
        stored = {"left": "a" if shown_a == "left" else "b", "right": "b" if shown_a == "left" else "a"}.get(
            req.vote, req.vote
        )
        row, created = await server.write(server.store.add_vote, cid, stored, req.vote_id, owner)
        if created:
            winner = {"a": c["variant_a"], "b": c["variant_b"]}.get(row["vote"], "none")
            server.metrics.feedback.labels("comparison", row["vote"], winner).inc()
        shown = {"a": shown_a, "b": "right" if shown_a == "left" else "left"}.get(row["vote"], row["vote"])
        return JSONResponse({"id": cid, "object": "vote", "vote": shown, "stored": created},
                            status_code=201 if created else 200)  # fmt: skip

    @app.get("/admin/weights")
    async def get_weights(_=scope("admin")):
        history = await server.write(server.store.weight_history)
        return {"weights": server.router.weights, "history": history}

    @app.put("/admin/weights")
    async def put_weights(req: WeightsRequest, _=scope("admin")):
        try:
            weights = server.router.set_weights(req.weights)
        except UserError as e:
            raise ApiError(400, str(e), param="weights") from None
        await server.write(server.store.set_weights, weights, "admin")
        server.metrics.set_weights(weights)
        log.info("A/B weights changed: %s", weights)
        return {"weights": weights}

    adding: set[str] = set()  # variant names being loaded right now (a second add of one name is refused)

    @app.post("/admin/variants")
    async def add_variant(req: VariantRequest, _=scope("admin")):
        from alignkit.serve.engine import make_variant

        if req.name in server.variants or req.name in adding:
            raise ApiError(400, f"variant '{req.name}' is already served. Fix: pick another name", param="name")
        settings = server.settings
        variant = make_variant(req.name, req.source, settings.device, settings.dtype, **settings.batching)
        adding.add(req.name)
        try:
            await asyncio.to_thread(variant.load)
        except Exception as e:  # noqa: BLE001 - a bad source is the caller's error; details only in the log
            log.warning("could not add variant %s from %s: %s: %s", req.name, req.source, type(e).__name__, e)
            what = "reach the upstream server" if variant.kind == "upstream" else "load a model"
            raise ApiError(400, f"could not {what} from '{req.source}'; the server log says why", "source") from None
        finally:
            adding.discard(req.name)
        server.variants[req.name] = variant
        weights = server.router.add(req.name, req.weight)
        await server.write(server.store.set_weights, weights, f"admin: added {req.name}")
        server.metrics.set_weights(weights)
        log.info("variant %s added from %s; A/B weights %s", req.name, req.source, weights)
        return {"name": req.name, "model": variant.model_id, "weights": weights}

    @app.get("/admin/detectors")
    async def detectors(_=scope("admin")):
        return server.check_alarms(force=True)

    @app.get("/rollout", response_class=HTMLResponse)
    async def rollout_page():
        from alignkit.serve.status import rollout_html

        events = await server.write(server.store.rollout_events, None, 50)
        return HTMLResponse(rollout_html(events, server.router.weights))

    page = Path(__file__).with_name("static") / "index.html"

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page.read_text(encoding="utf-8"))

    return Guard(app, server)


def _check_owner(stored: str | None, asking: str | None, what: str) -> None:
    """A response or comparison made for one user (or key) is rated only by that user (or key): 403 otherwise."""
    if stored is not None and stored != asking:
        raise ApiError(403, f"this {what} was answered for another user; only that user may rate it. Fix: send the "
                            "same 'user' (or API key) as the request that got it", code="not_owner")  # fmt: skip


def _state(variant) -> str:
    return "ready" if variant.ready else ("failed" if getattr(variant, "error", None) else "loading")


async def _generate(variant, messages: list[dict], params: ChatParams, metrics=None) -> ChatOut:
    items = await _open(variant, messages, params, metrics)
    out = None
    try:
        async for item in items:
            out = item
    except BadRequest as e:
        raise ApiError(400, str(e), code="context_length_exceeded") from None
    except UpstreamError as e:
        log.error("%s", e)
        raise ApiError(502, f"variant '{variant.name}' upstream failed; see the server log") from None
    finally:
        items.cancel()  # the client left before the answer was complete: stop generating it
    return out


async def _open(variant, messages: list[dict], params: ChatParams, metrics=None) -> OpenStream:
    """The variant's stream, queued: BadRequest -> 400, a full queue -> 429 with Retry-After, upstream -> 502."""
    try:
        return await variant.open_stream(messages, params)
    except BadRequest as e:
        raise ApiError(400, str(e), code="context_length_exceeded") from None
    except QueueFull as e:
        if metrics is not None:
            metrics.rejected.labels("queue").inc()
        raise ApiError(429, f"variant '{variant.name}': {e}", code="queue_full",
                       headers={"Retry-After": str(e.retry_after)}) from None  # fmt: skip
    except UpstreamError as e:
        log.error("%s", e)
        raise ApiError(502, f"variant '{variant.name}' upstream failed; see the server log") from None


async def _stream(server: Server, variant, items: OpenStream, messages, params, rid, created, owner, usage: bool):
    """SSE: a role chunk, content deltas, a finish chunk per choice, the usage chunk if asked, then [DONE]. The
    rows are committed before [DONE]; an error mid-stream ends the stream with an error event."""
    model = variant.name
    try:
        yield _chunk(rid, created, model, [{"index": k, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None} for k in range(params.n)])  # fmt: skip
        out = None
        async for item in items:
            if isinstance(item, Delta):
                yield _chunk(rid, created, model, [{"index": item.index, "delta": {"content": item.text},
                                                    "finish_reason": None}])  # fmt: skip
            else:
                out = item
        await server.commit(server.rows(rid, variant, messages, out, params, owner))
        for k, c in enumerate(out.choices):
            yield _chunk(rid, created, model, [{"index": k, "delta": {}, "finish_reason": c.finish_reason,
                                                "response_id": rid if k == 0 else f"{rid}-{k}"}])  # fmt: skip
        if usage:
            generated = sum(c.completion_tokens for c in out.choices)
            yield _chunk(rid, created, model, [], {"prompt_tokens": out.prompt_tokens, "completion_tokens": generated,
                                                   "total_tokens": out.prompt_tokens + generated})  # fmt: skip
        yield "data: [DONE]\n\n"
    except (ApiError, BadRequest, UpstreamError) as e:
        if isinstance(e, ApiError):
            status, message = e.status, e.message
        elif isinstance(e, BadRequest):
            status, message = 400, str(e)
        else:
            log.error("%s", e)
            status, message = 502, f"variant '{variant.name}' upstream failed; see the server log"
        yield f"data: {json.dumps(error_body(status, message))}\n\n"
    except Exception:  # noqa: BLE001 - headers are sent: end the stream with an error event, log the trace
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s in a chat stream", ref)
        yield f"data: {json.dumps(error_body(500, f'internal error (reference {ref}); see the server log'))}\n\n"
    finally:
        items.cancel()  # a stream left early (client gone) stops generating; a finished one is unaffected
        server.release()
