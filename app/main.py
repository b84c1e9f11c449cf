"""The app factory: lifespan, middleware, error handlers and routers. Wiring only."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.availability import DatabaseAvailabilityMiddleware
from app.bootstrap import build_context, close_context, wire_carrier
from app.db import is_connection_error, is_transient_error
from app.errors import AppError
from app.metrics import process_stopping
from app.observability import BodySizeLimitMiddleware, ObservabilityMiddleware, configure_logging
from app.openapi import document_api, operation_id
from app.rate_limits import RateLimitMiddleware
from app.responses import FastJSONResponse, app_error_response, error_response
from app.routers import ALL_ROUTERS, conversations, messages, simulator, webhooks
from app.routers._lean import fast_path, is_json_media, lean_routes
from app.services.inbound import warm_routes
from app.settings import Settings, SettingsError, get_settings
from app.worker import start_worker

log = logging.getLogger("app")

OPENAPI_TAGS = [
    {"name": "operator", "description": "Create organizations (operator token)."},
    {
        "name": "organization",
        "description": "The caller's organization: its HELP reply, time zone and quiet hours.",
    },
    {"name": "users", "description": "Staff members of an organization (admins manage them)."},
    {"name": "groups", "description": "Groups with a shared extension and SMS conversations."},
    {"name": "phone-numbers", "description": "The organization's numbers and their SMS routing."},
    {"name": "routing", "description": "Problems in an organization's routing."},
    {"name": "me", "description": "The caller and their auto-responder."},
    {"name": "messages", "description": "Send internal messages and SMS."},
    {"name": "conversations", "description": "Read, reply to and mark conversations read."},
    {"name": "events", "description": "Live Server-Sent Events for new messages and statuses."},
    {
        "name": "webhooks",
        "description": "Carrier callbacks, signed by the carrier: called by Telnyx and Twilio "
        "at `PUBLIC_BASE_URL` + the path, never by a client of the API (so they are "
        "described as webhooks, which client generators leave out).",
    },
    {"name": "audit", "description": "Who changed the organization's configuration."},
    {"name": "operations", "description": "Health, readiness and metrics."},
]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
}


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "")


def _body_error(errors: Sequence[Any]) -> bool:
    return any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, leaves in the contract's shape."""

    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> FastJSONResponse:
        return app_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> FastJSONResponse:
        errors = exc.errors()
        if exc.body and _body_error(errors) and not is_json_media(request.headers.get("content-type")):
            # FastAPI read a body it was not told is JSON as text: say what is missing.
            given = request.headers.get("content-type")
            return error_response(
                415,
                "unsupported_media_type",
                "The body must be JSON, sent with 'Content-Type: application/json' "
                f"({f'not {given!r}' if given else 'the header is missing'}).",
                {"content_type": given, "expected": "application/json"},
            )
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", "The request body is not valid JSON.")
        details = [
            {
                "field": _field_path(tuple(e.get("loc", ()))),
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in errors
        ]
        fields = ", ".join(sorted({d["field"] for d in details if d["field"]}))
        return error_response(
            422,
            "validation_error",
            f"The request is not valid ({fields})." if fields else "The request is not valid.",
            details,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = "No such resource."
        response = error_response(exc.status_code, code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(OSError)
    async def _database_down(request: Request, exc: Exception) -> FastJSONResponse:
        # A 5xx makes carriers deliver the webhook again: nothing is lost.
        if isinstance(exc, DBAPIError) and is_transient_error(exc):
            # A retry succeeds; carriers retry a 5xx on their own.
            log.warning("database conflict", extra={"fields": {"error": type(exc).__name__}})
            return error_response(
                503, "database_busy", "The request collided with another; try again."
            )
        if isinstance(exc, DBAPIError) and not is_connection_error(exc):
            log.exception("database error", exc_info=exc)
            return error_response(500, "internal_error", "Something went wrong on our side.")
        log.error("database unavailable", extra={"fields": {"error": type(exc).__name__}})
        ctx = getattr(request.app.state, "ctx", None)
        # The database itself stopped answering (a lost connection, a statement that
        # timed out): fail fast until it answers again. Not a busy pool (contention),
        # nor the embedded SQLite file (a lock is only contention there).
        silent = isinstance(exc, TimeoutError) or (
            isinstance(exc, DBAPIError) and is_connection_error(exc)
        )
        if silent and ctx is not None and not ctx.settings.is_sqlite:
            ctx.db_guard.mark_down(type(exc).__name__)
        return error_response(
            503, "database_unavailable", "The database cannot be reached; try again shortly."
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> FastJSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "Something went wrong on our side.")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; `settings` defaults to the environment's."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await build_context(settings)
        wire_carrier(ctx)
        if settings.run_worker:
            start_worker(ctx)
        # In the background: the process serves (and answers /healthz) at once, and a
        # database that is not there yet only means a cold cache.
        ctx.background.append(asyncio.create_task(warm_routes(ctx), name="warm-routes"))
        guard = asyncio.create_task(ctx.streams.run_forever(), name="stream-guard")
        ctx.background.append(guard)
        ctx.essential["event stream guard"] = guard
        app.state.ctx = ctx
        # What start-up allocated lives as long as the process: keep the cyclic
        # collector from scanning it again and again (pauses in the latency tail).
        gc.freeze()
        # A request allocates a few thousand short-lived objects, nearly all freed by
        # reference counting: collect the young generation every 50,000 allocations
        # instead of every 700, so the collector runs far less often for the same work.
        gc.set_threshold(50_000, 20, 20)
        try:
            yield
        finally:
            await close_context(app.state.ctx)
            process_stopping()

    app = FastAPI(
        title="Messaging service",
        version="0.1.0",
        description=(
            "SMS and secure messaging for clinics: send and receive texts from business "
            "numbers, message colleagues, follow conversations live. Authenticate with "
            "`Authorization: Bearer <token>`. Errors are "
            '`{"error": {"code", "message", "details"}}`.'
        ),
        openapi_tags=OPENAPI_TAGS,
        generate_unique_id_function=operation_id,
        servers=[{"url": "/", "description": "The service that serves this document"}],
        license_info={"name": "Proprietary", "identifier": "LicenseRef-Proprietary"},
        lifespan=lifespan,
        # /docs is served with its assets by app.routers.docs (no CDN); no ReDoc page.
        docs_url=None,
        redoc_url=None,
        # The service has its own metrics (/metrics) and logs; FastAPI's OpenTelemetry
        # hooks would only look for a tracer on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    for router in ALL_ROUTERS:
        app.include_router(router)
    if settings.carrier == "simulator":
        # Development only: never mounted when a real carrier sends.
        app.include_router(simulator.router)
    # Carrier webhooks, the busiest routes, served without FastAPI's route machinery;
    # documented as webhooks (carriers call them, clients of the API never do).
    app.router.routes[0:0] = lean_routes(webhooks.router)
    # The most frequent send (one text, one number) likewise; any other request to the
    # same route goes on to its API route.
    app.router.routes.insert(
        0, fast_path(messages.router, "/v1/messages", "POST", messages.send_message_fast)
    )
    # And the shared inbox's list, read over and over by every front desk.
    app.router.routes.insert(
        0,
        fast_path(
            conversations.router, "/v1/conversations", "GET", conversations.list_conversations_fast
        ),
    )
    app.webhooks.include_router(webhooks.router)
    document_api(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(
        DatabaseAvailabilityMiddleware,
        guard=lambda: getattr(getattr(app.state, "ctx", None), "db_guard", None),
    )
    app.add_middleware(RateLimitMiddleware, limiter=lambda: app.state.ctx.api_limits)
    app.add_middleware(ObservabilityMiddleware)
    if settings.cors_origins:
        # Outermost: preflights are answered before anything else, and every answer
        # (a 401, a 429 and its Retry-After) is readable by the calling page.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Retry-After", "X-Request-ID"],
            max_age=600,
        )
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app on first access, after the environment is read.
    if name == "app":
        try:
            application = create_app(get_settings().require_complete())
        except SettingsError as exc:
            # One line a newcomer can act on, not a traceback from deep in the server.
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        globals()["app"] = application
        return application
    raise AttributeError(name)
