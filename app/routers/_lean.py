"""Plain Starlette routes for the few API routes that take only the request.

FastAPI's own route machinery (matching through included routers, solving an empty
set of dependencies, an exit stack per request) costs more than such an endpoint does
on the busiest paths. `lean_routes` serves the same endpoint functions as plain
Starlette routes, matched before every API route; the API routes stay in place for
the OpenAPI document. The exception handlers, the middlewares and the metrics apply
as for any route.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.routing import Match, Route
from starlette.types import Scope


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
