"""Users of an organization, their tokens and (for admins) their auto-responders."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.deps import AdminUser, ContextDep, SessionDep
from app.schemas.common import Page
from app.schemas.directory import (
    AutoResponder,
    AutoResponderOut,
    TokenCreate,
    TokenCreated,
    UserCreate,
    UserOut,
    UserPage,
    UserUpdate,
)
from app.schemas.errors import errors
from app.services import auto_responder, users

from ._params import PageParams

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    openapi_extra=errors("username_taken", "extension_taken", "conflict"),
)
async def create_user(body: UserCreate, session: SessionDep, admin: AdminUser) -> UserOut:
    """Add a staff member."""
    user = await users.create_user(
        session,
        admin.org_id,
        admin.actor,
        username=body.username,
        display_name=body.display_name,
        role=body.role,
        extension=body.extension,
        sms_enabled=body.sms_enabled,
    )
    return UserOut.model_validate(user)


@router.get("", response_model=UserPage, openapi_extra=errors("invalid_cursor"))
async def list_users(
    session: SessionDep,
    admin: AdminUser,
    page: PageParams,
    include_deactivated: Annotated[
        bool, Query(description="Also list deactivated users (`deactivated_at` set).")
    ] = False,
) -> Page[UserOut]:
    """The organization's users."""
    found, cursor = await users.list_users(
        session, admin.org_id, page.limit, page.cursor, include_deactivated=include_deactivated
    )
    return Page(items=[UserOut.model_validate(u) for u in found], next_cursor=cursor)


@router.get("/{user_id}", response_model=UserOut, openapi_extra=errors("user_not_found"))
async def get_user(user_id: uuid.UUID, session: SessionDep, admin: AdminUser) -> UserOut:
    """One user."""
    return UserOut.model_validate(await users.get_user(session, admin.org_id, user_id))


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    openapi_extra=errors(
        "user_not_found",
        "extension_taken",
        "last_admin",
        "number_not_owned",
        "invalid_phone_number",
        "validation_error",
    ),
)
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, session: SessionDep, admin: AdminUser
) -> UserOut:
    """Change the given fields; `null` clears the extension or the outbound number."""
    user = await users.update_user(
        session, admin.org_id, admin.actor, user_id, body.model_dump(exclude_unset=True)
    )
    return UserOut.model_validate(user)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=errors("user_not_found", "last_admin"),
)
async def deactivate_user(user_id: uuid.UUID, session: SessionDep, admin: AdminUser) -> Response:
    """Deactivate a user: tokens revoked, extension released, history kept."""
    await users.deactivate_user(session, admin.org_id, admin.actor, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{user_id}/reactivate",
    response_model=UserOut,
    openapi_extra=errors("user_not_found", "user_active"),
)
async def reactivate_user(user_id: uuid.UUID, session: SessionDep, admin: AdminUser) -> UserOut:
    """Make a deactivated user active again (409 `user_active` if they are). Old tokens
    stay revoked; extension, groups and outbound number are given again as for a new user."""
    return UserOut.model_validate(
        await users.reactivate_user(session, admin.org_id, admin.actor, user_id)
    )


@router.post(
    "/{user_id}/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    openapi_extra=errors("user_not_found"),
)
async def create_token(
    user_id: uuid.UUID, session: SessionDep, admin: AdminUser, body: TokenCreate | None = None
) -> TokenCreated:
    """A new API token for the user, shown once."""
    row, token = await users.create_token(
        session, admin.org_id, admin.actor, user_id, body.name if body else None
    )
    return TokenCreated(id=row.id, token=token, created_at=row.created_at)


@router.delete(
    "/{user_id}/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=errors("user_not_found", "token_not_found"),
)
async def revoke_token(
    user_id: uuid.UUID, token_id: uuid.UUID, session: SessionDep, admin: AdminUser
) -> Response:
    """Revoke one token."""
    await users.revoke_token(session, admin.org_id, admin.actor, user_id, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{user_id}/auto-responder",
    response_model=AutoResponderOut,
    openapi_extra=errors("user_not_found"),
)
async def get_user_auto_responder(
    user_id: uuid.UUID, ctx: ContextDep, session: SessionDep, admin: AdminUser
) -> AutoResponderOut:
    """A user's auto-responder."""
    found = await auto_responder.get_auto_responder(ctx.keyring, session, admin.org_id, user_id)
    return AutoResponderOut.model_validate(found.as_dict())


@router.put(
    "/{user_id}/auto-responder",
    response_model=AutoResponderOut,
    openapi_extra=errors("user_not_found", "validation_error"),
)
async def set_user_auto_responder(
    user_id: uuid.UUID,
    body: AutoResponder,
    ctx: ContextDep,
    session: SessionDep,
    admin: AdminUser,
) -> AutoResponderOut:
    """Replace a user's auto-responder, as `PUT /v1/me/auto-responder` does."""
    found = await auto_responder.set_auto_responder(
        ctx.keyring,
        session,
        admin.org_id,
        admin.actor,
        user_id,
        **body.model_dump(mode="json", by_alias=True),
    )
    return AutoResponderOut.model_validate(found.as_dict())
