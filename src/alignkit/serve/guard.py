"""The ASGI layer in front of the routes: request size and type limits (413, 415) checked before a body is read
into memory, requests/latency/in-flight metrics by route template (never by raw path: bounded labels)."""

from __future__ import annotations

import json
import time

from starlette.routing import Match

from alignkit.serve.schemas import error_body


class ApiError(Exception):
    """An error the client hears, in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


async def _send_error(send, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Wraps the FastAPI app (``.app``) with the limits of ``server.settings`` and the request metrics."""

    def __init__(self, app, server):
        self.app, self.server = app, server
        self.state = app.state

    def route_of(self, scope) -> str:
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        m = self.server.metrics
        route = self.route_of(scope)
        status = {"code": 500}
        t0 = time.perf_counter()
        m.in_flight.inc()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            limit = self.server.settings.max_body_bytes
            if scope["method"] in ("POST", "PUT"):
                ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                length = headers.get(b"content-length")
                if ctype != b"application/json":
                    m.rejected.labels("content_type").inc()
                    return await _send_error(send_status, 415, "send the body as JSON with 'Content-Type: "
                                             "application/json'", "unsupported_media_type")  # fmt: skip
                if length is not None and (not length.isdigit() or int(length) > limit):
                    m.rejected.labels("size").inc()
                    return await _send_error(send_status, 413, f"the request body is over {limit} bytes. Fix: "
                                             "send a shorter conversation", "request_too_large")  # fmt: skip
                # the body is read here, bounded, and replayed: a chunked body without a length is cut at the limit
                chunks, seen, more = [], 0, True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    chunks.append(message.get("body", b""))
                    seen += len(chunks[-1])
                    more = message.get("more_body", False)
                    if seen > limit:
                        m.rejected.labels("size").inc()
                        return await _send_error(send_status, 413, f"the request body is over {limit} bytes",
                                                 "request_too_large")  # fmt: skip
                body, replayed = b"".join(chunks), False

                async def replay():
                    nonlocal replayed
                    if replayed:
                        return await receive()  # http.disconnect when the client leaves
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}

                return await self.app(scope, replay, send_status)
            await self.app(scope, receive, send_status)
        finally:
            m.in_flight.dec()
            m.requests.labels(route, str(status["code"])).inc()
            m.latency.labels(route).observe(time.perf_counter() - t0)
