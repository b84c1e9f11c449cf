"""Contacts: the organization's address book, for any of its members."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.deps import ContextDep, CurrentUser, SessionDep
from app.schemas.common import Page
from app.schemas.contacts import ContactCreate, ContactOut, ContactPage, ContactUpdate
from app.schemas.errors import errors
from app.services import contacts

from ._params import PageParams, SearchText

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ContactOut,
    openapi_extra=errors("invalid_phone_number", "contact_exists"),
)
async def create_contact(
    body: ContactCreate, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> ContactOut:
    """Add a contact: one per phone number."""
    view = await contacts.create_contact(
        ctx.keyring, session, user, phone_number=body.phone_number, name=body.name
    )
    return ContactOut.model_validate(view)


@router.get(
    "", response_model=ContactPage, openapi_extra=errors("invalid_cursor", "invalid_search")
)
async def list_contacts(
    ctx: ContextDep, session: SessionDep, user: CurrentUser, page: PageParams, q: SearchText = None
) -> Page[ContactOut]:
    """The organization's contacts, oldest first; `q` finds them by name or number."""
    found, cursor = await contacts.list_contacts(
        ctx.keyring, session, user, q, page.limit, page.cursor
    )
    return Page(items=[ContactOut.model_validate(v) for v in found], next_cursor=cursor)


@router.get("/{contact_id}", response_model=ContactOut, openapi_extra=errors("contact_not_found"))
async def get_contact(
    contact_id: uuid.UUID, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> ContactOut:
    """One contact."""
    return ContactOut.model_validate(
        await contacts.get_contact(ctx.keyring, session, user, contact_id)
    )


@router.patch(
    "/{contact_id}",
    response_model=ContactOut,
    openapi_extra=errors(
        "contact_not_found", "contact_exists", "invalid_phone_number", "validation_error"
    ),
)
async def update_contact(
    contact_id: uuid.UUID,
    body: ContactUpdate,
    ctx: ContextDep,
    session: SessionDep,
    user: CurrentUser,
) -> ContactOut:
    """Change the name or the number."""
    view = await contacts.update_contact(
        ctx.keyring, session, user, contact_id, body.model_dump(exclude_unset=True)
    )
    return ContactOut.model_validate(view)


@router.delete(
    "/{contact_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=errors("contact_not_found"),
)
async def delete_contact(contact_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> Response:
    """Remove a contact; conversations with its number stay."""
    await contacts.delete_contact(session, user, contact_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
