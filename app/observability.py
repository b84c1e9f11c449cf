"""Request ids, structured JSON logs and Prometheus metrics.

Logs carry ids, routes, statuses and timings: never a message body or a token.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import sys
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge
from app.infra.web_load import WEB_LOAD
from app.metrics import HTTP_LATENCY, HTTP_REQUESTS
from app.responses import app_error_response

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

log = logging.getLogger("app.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, json_logs: bool) -> None:
    """Send the service's logs to stderr, as JSON lines unless told otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger("app")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


_ids = itertools.count(1)
_id_prefix = os.urandom(6).hex()


def _new_request_id() -> str:
    """Unique, not secret: a per-process random prefix and a counter (no syscall)."""
    return f"{_id_prefix}{next(_ids):010x}"


def _fresh_request_ids() -> None:
    global _ids, _id_prefix
    _ids, _id_prefix = itertools.count(1), os.urandom(6).hex()


os.register_at_fork(after_in_child=_fresh_request_ids)


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _metrics_of(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The labelled counter and histogram, looked up once per (method, route, status)."""
    key = (method, route, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_LATENCY.labels(method, route),
        )
    return found


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObservabilityMiddleware:
    """Pure ASGI: request id in and out, one access log line and metrics per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:100]
                break
        rid = rid or _new_request_id()
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        WEB_LOAD.started()
        answering = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answering
            if message["type"] == "http.response.start":
                status = message["status"]
                if not answering:
                    answering = True
                    WEB_LOAD.ended()
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not answering:
                WEB_LOAD.ended()
            elapsed = time.perf_counter() - start
            route = _route_template(scope)
            method = scope.get("method", "")
            if route != "/metrics":
                requests, latency = _metrics_of(method, route, status)
                requests.inc()
                latency.observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "fields": {
                            "method": method,
                            "route": route,
                            "status": status,
                            "ms": round(elapsed * 1000, 2),
                        }
                    },
                )
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """Refuse request bodies over the limit with 413, before any handler reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        chunked = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        if declared is not None and not chunked:
            # The server reads exactly the declared length (more would be the next
            # request): within the limit, there is nothing to watch.
            await self.app(scope, receive, send)
            return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        responded = False

        async def guarded_send(message: Message) -> None:
            nonlocal responded
            if too_large:
                # The handler caught the overflow and answered something else (the
                # framework says 400): the client gets the 413 instead, once.
                if not responded:
                    responded = True
                    await self._refuse(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not responded:
                responded = True
                await self._refuse(scope, receive, send)
        except Exception:
            if too_large and not responded:
                await self._refuse(scope, receive, send)
            else:
                raise

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = PayloadTooLarge(
            f"The request body is larger than {self.max_bytes} bytes.",
            details={"max_bytes": self.max_bytes},
        )
        await app_error_response(refusal)(scope, receive, send)


class _TooLarge(Exception):
    pass
