"""The routing check and the audit log (organization admins)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import AdminUser, SessionDep
from app.schemas.common import Page
from app.schemas.directory import AuditEntryOut, AuditEntryPage, RoutingCheck, RoutingProblem
from app.schemas.errors import errors
from app.services import audit, routing

from ._params import PageParams

router = APIRouter(prefix="/v1")


@router.get("/routing/check", response_model=RoutingCheck, tags=["routing"])
async def check_routing(session: SessionDep, admin: AdminUser) -> RoutingCheck:
    """Routing that would confuse people, each problem with its subject."""
    problems = await routing.check_routing(session, admin.org_id)
    return RoutingCheck(
        ok=not problems,
        problems=[RoutingProblem.model_validate(p, from_attributes=True) for p in problems],
    )


@router.get(
    "/audit-log",
    response_model=AuditEntryPage,
    tags=["audit"],
    openapi_extra=errors("invalid_cursor"),
)
async def list_audit_log(
    session: SessionDep, admin: AdminUser, page: PageParams
) -> Page[AuditEntryOut]:
    """Configuration changes, newest first."""
    rows, cursor = await audit.list_entries(session, admin.org_id, page.limit, page.cursor)
    return Page(items=[AuditEntryOut.model_validate(r) for r in rows], next_cursor=cursor)
