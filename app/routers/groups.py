"""Groups: a shared extension, members, an optional outbound number, and an after-hours
reply."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.deps import AdminUser, ContextDep, CurrentUser, SessionDep
from app.schemas.common import Page
from app.schemas.directory import (
    AfterHours,
    AfterHoursOut,
    GroupCreate,
    GroupOut,
    GroupPage,
    GroupUpdate,
)
from app.schemas.errors import errors
from app.services import after_hours, groups

from ._params import PageParams

router = APIRouter(prefix="/v1/groups", tags=["groups"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=GroupOut,
    openapi_extra=errors(
        "extension_taken",
        "group_name_taken",
        "conflict",
        "unknown_members",
        "number_not_owned",
        "invalid_phone_number",
    ),
)
async def create_group(body: GroupCreate, session: SessionDep, admin: AdminUser) -> GroupOut:
    """Create a group."""
    group = await groups.create_group(
        session,
        admin.org_id,
        admin.actor,
        name=body.name,
        extension=body.extension,
        members=body.members,
        outbound_sms_number=body.outbound_sms_number,
    )
    return GroupOut.model_validate(group)


@router.get("", response_model=GroupPage, openapi_extra=errors("invalid_cursor"))
async def list_groups(session: SessionDep, user: CurrentUser, page: PageParams) -> Page[GroupOut]:
    """The organization's groups (any user may read them, to address them)."""
    found, cursor = await groups.list_groups(session, user.org_id, page.limit, page.cursor)
    return Page(items=[GroupOut.model_validate(g) for g in found], next_cursor=cursor)


@router.get("/{group_id}", response_model=GroupOut, openapi_extra=errors("group_not_found"))
async def get_group(group_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> GroupOut:
    """One group."""
    return GroupOut.model_validate(await groups.get_group(session, user.org_id, group_id))


@router.patch(
    "/{group_id}",
    response_model=GroupOut,
    openapi_extra=errors(
        "group_not_found",
        "extension_taken",
        "group_name_taken",
        "conflict",
        "unknown_members",
        "number_not_owned",
        "invalid_phone_number",
        "validation_error",
    ),
)
async def update_group(
    group_id: uuid.UUID, body: GroupUpdate, session: SessionDep, admin: AdminUser
) -> GroupOut:
    """Change the given fields; `members` replaces the whole list."""
    group = await groups.update_group(
        session, admin.org_id, admin.actor, group_id, body.model_dump(exclude_unset=True)
    )
    return GroupOut.model_validate(group)


@router.delete(
    "/{group_id}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=errors("group_not_found")
)
async def delete_group(group_id: uuid.UUID, session: SessionDep, admin: AdminUser) -> Response:
    """Delete a group; its conversations stay in the history."""
    await groups.delete_group(session, admin.org_id, admin.actor, group_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{group_id}/after-hours", response_model=AfterHoursOut, openapi_extra=errors("group_not_found")
)
async def get_after_hours(
    group_id: uuid.UUID, ctx: ContextDep, session: SessionDep, admin: AdminUser
) -> AfterHoursOut:
    """The group's after-hours reply (`schedule` null: it has none)."""
    found = await after_hours.get_after_hours(ctx.keyring, session, admin.org_id, group_id)
    return AfterHoursOut.model_validate(found.as_dict())


@router.put(
    "/{group_id}/after-hours",
    response_model=AfterHoursOut,
    openapi_extra=errors("group_not_found", "validation_error"),
)
async def set_after_hours(
    group_id: uuid.UUID, body: AfterHours, ctx: ContextDep, session: SessionDep, admin: AdminUser
) -> AfterHoursOut:
    """Replace the group's after-hours reply: one reply to an inbound text while the
    schedule is closed, from the number the group's replies go from, under the
    auto-responder's window and exclusions."""
    found = await after_hours.set_after_hours(
        ctx.keyring,
        session,
        admin.org_id,
        admin.actor,
        group_id,
        **body.model_dump(mode="json", by_alias=True),
    )
    return AfterHoursOut.model_validate(found.as_dict())
