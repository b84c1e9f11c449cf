"""The organization's phone numbers and where their inbound SMS go."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.deps import AdminUser, SessionDep
from app.schemas.common import Page
from app.schemas.directory import (
    PhoneNumberCreate,
    PhoneNumberOut,
    PhoneNumberPage,
    PhoneNumberUpdate,
)
from app.schemas.errors import errors
from app.services import phone_numbers

from ._params import PageParams

router = APIRouter(prefix="/v1/phone-numbers", tags=["phone-numbers"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PhoneNumberOut,
    openapi_extra=errors("invalid_phone_number", "phone_number_taken"),
)
async def add_phone_number(
    body: PhoneNumberCreate, session: SessionDep, admin: AdminUser
) -> PhoneNumberOut:
    """Add a number (any format; stored E.164) routed to an extension."""
    row = await phone_numbers.add_phone_number(
        session, admin.org_id, admin.actor, number=body.number, sms_extension=body.sms_extension
    )
    return PhoneNumberOut.model_validate(row)


@router.get("", response_model=PhoneNumberPage, openapi_extra=errors("invalid_cursor"))
async def list_phone_numbers(
    session: SessionDep, admin: AdminUser, page: PageParams
) -> Page[PhoneNumberOut]:
    """The organization's numbers."""
    rows, cursor = await phone_numbers.list_phone_numbers(
        session, admin.org_id, page.limit, page.cursor
    )
    return Page(items=[PhoneNumberOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.get(
    "/{number_id}", response_model=PhoneNumberOut, openapi_extra=errors("phone_number_not_found")
)
async def get_phone_number(
    number_id: uuid.UUID, session: SessionDep, admin: AdminUser
) -> PhoneNumberOut:
    """One number."""
    return PhoneNumberOut.model_validate(
        await phone_numbers.get_phone_number(session, admin.org_id, number_id)
    )


@router.patch(
    "/{number_id}", response_model=PhoneNumberOut, openapi_extra=errors("phone_number_not_found")
)
async def route_phone_number(
    number_id: uuid.UUID, body: PhoneNumberUpdate, session: SessionDep, admin: AdminUser
) -> PhoneNumberOut:
    """Route the number's inbound SMS to another extension, or to no one (null)."""
    row = await phone_numbers.update_phone_number(
        session, admin.org_id, admin.actor, number_id, body.sms_extension
    )
    return PhoneNumberOut.model_validate(row)


@router.delete(
    "/{number_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=errors("phone_number_not_found", "phone_number_in_use"),
)
async def delete_phone_number(
    number_id: uuid.UUID, session: SessionDep, admin: AdminUser
) -> Response:
    """Release a number (refused while someone sends from it)."""
    await phone_numbers.delete_phone_number(session, admin.org_id, admin.actor, number_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
