"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from app.deps import ContextDep
from app.metrics import exposition
from app.responses import FastJSONResponse, error_response
from app.schemas.errors import errors
from app.schemas.health import Liveness, Readiness
from app.services.health import check_liveness, check_readiness
from app.services.operations import outbox_gauges

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Liveness,
    responses={503: {"description": "The process can no longer serve"}},
    operation_id="check_liveness",
    openapi_extra=errors("not_alive"),
)
async def healthz(ctx: ContextDep) -> FastJSONResponse:
    """The process can serve (liveness): its essential background work runs and no
    database connection is stuck; 503 names what is wrong (restart the process)."""
    problems = check_liveness(ctx)
    if not problems:
        return FastJSONResponse({"status": "ok"})
    return error_response(
        503, "not_alive", "Cannot serve: " + ", ".join(sorted(problems)) + ".", problems
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"description": "A dependency is down"}},
    operation_id="check_readiness",
    openapi_extra=errors("not_ready"),
)
async def readyz(ctx: ContextDep) -> FastJSONResponse:
    """The database and, when configured, Redis answer; 503 names the one that does not."""
    checks = await check_readiness(ctx)
    if all(v == "ok" for v in checks.values()):
        return FastJSONResponse({"status": "ready", "checks": checks})
    failed = sorted(k for k, v in checks.items() if v != "ok")
    return error_response(
        503, "not_ready", "Not ready: " + ", ".join(failed) + " unreachable.", checks
    )


@router.get(
    "/metrics",
    response_class=Response,
    operation_id="get_metrics",
    responses={
        200: {
            "description": "Prometheus' text format, or OpenMetrics when `Accept` asks for it.",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        }
    },
)
async def metrics(
    ctx: ContextDep, accept: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Response:
    """Prometheus metrics of every worker of this service, in OpenMetrics when the
    scraper's `Accept` asks for it, else in Prometheus' text format."""
    body, content_type = exposition(accept, await outbox_gauges(ctx))
    return Response(body, headers={"Content-Type": content_type})
