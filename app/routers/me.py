"""The caller: who they are and their own auto-responder."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ContextDep, CurrentUser, SessionDep
from app.schemas.directory import AutoResponder, AutoResponderOut, UserOut
from app.schemas.errors import errors
from app.services import auto_responder, users

router = APIRouter(prefix="/v1/me", tags=["me"])


@router.get(
    "", response_model=UserOut, operation_id="get_me", openapi_extra=errors("user_not_found")
)
async def me(session: SessionDep, user: CurrentUser) -> UserOut:
    """The authenticated user."""
    return UserOut.model_validate(await users.get_user(session, user.org_id, user.user_id))


@router.get(
    "/auto-responder", response_model=AutoResponderOut, openapi_extra=errors("user_not_found")
)
async def get_auto_responder(
    ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> AutoResponderOut:
    """The caller's auto-responder."""
    found = await auto_responder.get_auto_responder(ctx.keyring, session, user.org_id, user.user_id)
    return AutoResponderOut.model_validate(found.as_dict())


@router.put(
    "/auto-responder",
    response_model=AutoResponderOut,
    openapi_extra=errors("user_not_found", "validation_error"),
)
async def set_auto_responder(
    body: AutoResponder, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> AutoResponderOut:
    """Replace the caller's auto-responder (text 1 to 1600 characters): with a schedule
    it answers only while the schedule is closed or an away period holds."""
    found = await auto_responder.set_auto_responder(
        ctx.keyring,
        session,
        user.org_id,
        user.actor,
        user.user_id,
        **body.model_dump(mode="json", by_alias=True),
    )
    return AutoResponderOut.model_validate(found.as_dict())
