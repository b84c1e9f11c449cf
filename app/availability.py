"""Answering at once while the database is known to be silent.

While `DatabaseGuard` says the database does not answer, a request that would need it
gets 503 `database_unavailable` at once (carriers deliver the webhook again later)
instead of waiting out a timeout and holding a connection slot meanwhile. The
operations endpoints pass: `/healthz` says whether the process itself can serve,
`/readyz` asks the database itself, `/metrics` and the docs need no database.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceUnavailable
from app.infra.db_guard import DatabaseGuard
from app.responses import app_error_response

_NO_DATABASE = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc")


class DatabaseAvailabilityMiddleware:
    """503 at once for what needs the database while it is known silent."""

    def __init__(self, app: ASGIApp, guard: Callable[[], DatabaseGuard | None]) -> None:
        self.app = app
        self._guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            guard = self._guard()
            if guard is not None and guard.is_down and not _needs_no_database(scope):
                refusal = ServiceUnavailable(
                    "The database cannot be reached; try again shortly.",
                    code="database_unavailable",
                )
                await app_error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _needs_no_database(scope: Scope) -> bool:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith(_NO_DATABASE)
