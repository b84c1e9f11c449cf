"""The caller's organization: its HELP reply, time zone and quiet hours."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import AdminUser, ContextDep, CurrentUser, SessionDep
from app.schemas.directory import OrganizationOut, OrganizationUpdate
from app.schemas.errors import errors
from app.services import organizations

router = APIRouter(prefix="/v1/organization", tags=["organization"])


@router.get("", response_model=OrganizationOut, openapi_extra=errors("organization_not_found"))
async def get_organization(
    ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> OrganizationOut:
    """The caller's organization and its settings (any member)."""
    found = await organizations.get_organization(
        session, user.org_id, ctx.settings.default_help_text
    )
    return OrganizationOut.model_validate(found.as_dict())


@router.patch(
    "",
    response_model=OrganizationOut,
    openapi_extra=errors("organization_not_found", "validation_error"),
)
async def update_organization(
    body: OrganizationUpdate, ctx: ContextDep, session: SessionDep, admin: AdminUser
) -> OrganizationOut:
    """Change the given settings; `help_text: null` goes back to the default HELP reply,
    `quiet_hours: null` removes them."""
    found = await organizations.update_organization(
        session,
        admin.org_id,
        admin.actor,
        body.model_dump(exclude_unset=True, mode="json"),
        ctx.settings.default_help_text,
    )
    return OrganizationOut.model_validate(found.as_dict())
