"""Plain Starlette routes for the few API routes that take only the request.

FastAPI's own route machinery (matching through included routers, solving an empty
set of dependencies, an exit stack per request) costs more than such an endpoint does
on the busiest paths. `lean_routes` serves the same endpoint functions as plain
Starlette routes, matched before every API route; the API routes stay in place for
the OpenAPI document. The exception handlers, the middlewares and the metrics apply
as for any route.

`fast_path` does the same for the usual request of a route that takes parameters, a
body or headers (a send to one phone number, the inbox list): that request is read with
a few direct checks, anything else goes on to the API route as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send


def is_json_media(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of this type as JSON (`application/json`, `*+json`)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class LeanRoute(Route):
    """A Starlette route that names itself in the scope, as API routes do (the metrics
    and the access log label requests by `scope["route"].path`)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def lean_routes(router: APIRouter) -> list[Route]:
    """The router's routes as LeanRoutes: same paths, methods and endpoints."""
    routes: list[Route] = []
    for route in router.routes:
        assert isinstance(route, APIRoute)
        d = route.dependant
        params = (d.dependencies, d.path_params, d.query_params, d.header_params, d.body_params)
        if any(params) or d.cookie_params:
            raise TypeError(f"{route.path} takes more than the request: it cannot be lean")
        routes.append(LeanRoute(route.path, route.endpoint, methods=sorted(route.methods or ())))
    return routes


FastPath = Callable[[Request, bytes], Awaitable[Response | None]]


class FastPathRoute(LeanRoute):
    """An API route with a fast path for its usual request, in front of the API route
    itself. `fast` reads the request and its body and answers it, or returns None for
    anything unusual (another content type, a body that does not validate, no token):
    the API route then handles the same request, body and all, as if alone, with
    FastAPI's own parsing and errors. Both end in the same service call."""

    def __init__(self, route: APIRoute, fast: FastPath) -> None:
        self._route = route
        self._fast = fast
        super().__init__(route.path, route.endpoint, methods=sorted(route.methods or ()))
        # Named after the API route's endpoint; served by `_handle`.
        self.app = self._handle

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await request.body()
        except ClientDisconnect:
            # The client left before its request was whole: no one to answer, nothing
            # done (the server counts the disconnect).
            return
        response = await self._fast(request, body)
        if response is not None:
            await response(scope, receive, send)
            return
        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._route.handle(scope, replay, send)


def fast_path(router: APIRouter, path: str, method: str, fast: FastPath) -> FastPathRoute:
    """A FastPathRoute for the router's route at `path` and `method`."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            return FastPathRoute(route, fast)
    raise LookupError(f"{method} {path} is not a route of this router")
