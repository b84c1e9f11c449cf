"""The organization's address book: one contact per phone number, its name encrypted at
rest and found by parts of it through the blind index (`contact_search`).

A contact's search terms are always computed under the key that sealed its name: both
are written together, here and in key rotation (`reseal`), so a search hashes its text
under each key on the ring and finds every contact, in the middle of a rotation too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring, key_id_of
from app.db import commit_or_conflict
from app.errors import Conflict, Invalid, NotFound
from app.ids import new_id
from app.models import Contact, ContactSearchTerm, utcnow
from app.services import audit
from app.services.auth import Principal
from app.services.contact_search import Search, contact_terms, parse_search
from app.services.pagination import decode_cursor, split_page
from app.services.phone import parse_number
from app.services.sealing import open_contact_name, seal_contact_name


@dataclass(frozen=True)
class ContactView:
    """A contact as the API shows it: its name in plain."""

    id: uuid.UUID
    phone_number: str
    name: str
    created_at: datetime
    updated_at: datetime


def _view(keyring: Keyring, contact: Contact) -> ContactView:
    return ContactView(
        id=contact.id,
        phone_number=contact.phone_number,
        name=open_contact_name(keyring, contact.id, contact.org_id, contact.name_ciphertext),
        created_at=contact.created_at,
        updated_at=contact.updated_at,
    )


def not_found() -> NotFound:
    return NotFound("No such contact.", code="contact_not_found")


async def _write_terms(
    session: AsyncSession, keyring: Keyring, contact: Contact, name: str
) -> None:
    """Replace a contact's search terms with those of its name and number, under the key
    its name is sealed with."""
    await session.execute(
        delete(ContactSearchTerm).where(ContactSearchTerm.contact_id == contact.id)
    )
    terms = contact_terms(
        keyring, key_id_of(contact.name_ciphertext), contact.org_id, name, contact.phone_number
    )
    if terms:
        await session.execute(
            insert(ContactSearchTerm),
            [
                {"term": t, "contact_id": contact.id, "phone_number": contact.phone_number}
                for t in terms
            ],
        )


async def reseal(session: AsyncSession, keyring: Keyring, contact: Contact, name: str) -> None:
    """Seal a contact's name under the newest key and write its terms under that key, in
    the caller's transaction (a new name, a new number, or key rotation)."""
    contact.name_ciphertext = seal_contact_name(keyring, contact.id, contact.org_id, name)
    await _write_terms(session, keyring, contact, name)


async def _ensure_number_free(
    session: AsyncSession, org_id: uuid.UUID, number: str, other_than: uuid.UUID | None = None
) -> None:
    existing = await session.scalar(
        select(Contact.id).where(Contact.org_id == org_id, Contact.phone_number == number)
    )
    if existing is not None and existing != other_than:
        raise Conflict(
            f"There is already a contact for {number}.",
            code="contact_exists",
            details={"phone_number": number, "contact_id": str(existing)},
        )


async def create_contact(
    keyring: Keyring, session: AsyncSession, principal: Principal, *, phone_number: str, name: str
) -> ContactView:
    """A new contact; one per phone number in the organization (409 `contact_exists`)."""
    number = parse_number(phone_number, "phone_number")
    await _ensure_number_free(session, principal.org_id, number)
    contact_id = new_id()
    contact = Contact(
        id=contact_id,
        org_id=principal.org_id,
        phone_number=number,
        name_ciphertext=seal_contact_name(keyring, contact_id, principal.org_id, name),
    )
    session.add(contact)
    await session.flush()
    await _write_terms(session, keyring, contact, name)
    audit.record(
        session,
        org_id=principal.org_id,
        actor=principal.actor,
        action="contact.create",
        target_type="contact",
        target_id=contact.id,
        changes={"phone_number": number},  # never the name: it is patient data
    )
    await commit_or_conflict(session, f"There is already a contact for {number}.", "contact_exists")
    return _view(keyring, contact)


async def _get(session: AsyncSession, org_id: uuid.UUID, contact_id: uuid.UUID) -> Contact:
    contact = await session.scalar(
        select(Contact).where(Contact.id == contact_id, Contact.org_id == org_id)
    )
    if contact is None:
        raise not_found()
    return contact


async def get_contact(
    keyring: Keyring, session: AsyncSession, principal: Principal, contact_id: uuid.UUID
) -> ContactView:
    """One of the organization's contacts; 404 for anything else."""
    return _view(keyring, await _get(session, principal.org_id, contact_id))


async def update_contact(
    keyring: Keyring,
    session: AsyncSession,
    principal: Principal,
    contact_id: uuid.UUID,
    changes: dict[str, Any],
) -> ContactView:
    """Change a contact's name or number (the other stays); its terms follow."""
    contact = await _get(session, principal.org_id, contact_id)
    for field in ("name", "phone_number"):
        if field in changes and changes[field] is None:
            raise Invalid(
                f"'{field}' cannot be null.", code="validation_error", details=[{"field": field}]
            )
    before = _view(keyring, contact)
    name = changes.get("name") or before.name
    recorded: dict[str, Any] = {}
    if changes.get("phone_number") is not None:
        number = parse_number(changes["phone_number"], "phone_number")
        if number != contact.phone_number:
            await _ensure_number_free(session, principal.org_id, number, other_than=contact.id)
            recorded["phone_number"] = {"from": contact.phone_number, "to": number}
            contact.phone_number = number
    if name != before.name:
        recorded["name"] = "changed"
    if recorded:
        contact.updated_at = utcnow()
        await reseal(session, keyring, contact, name)
        audit.record(
            session,
            org_id=principal.org_id,
            actor=principal.actor,
            action="contact.update",
            target_type="contact",
            target_id=contact.id,
            changes=recorded,
        )
        await commit_or_conflict(
            session, f"There is already a contact for {contact.phone_number}.", "contact_exists"
        )
    return _view(keyring, contact)


async def delete_contact(
    session: AsyncSession, principal: Principal, contact_id: uuid.UUID
) -> None:
    """Remove a contact and its search terms; conversations with the number stay."""
    contact = await _get(session, principal.org_id, contact_id)
    await session.execute(delete(Contact).where(Contact.id == contact.id))
    audit.record(
        session,
        org_id=principal.org_id,
        actor=principal.actor,
        action="contact.delete",
        target_type="contact",
        target_id=contact.id,
        changes={"phone_number": contact.phone_number},
    )
    await session.commit()


def matching(search: Search, keyring: Keyring, org_id: uuid.UUID) -> ColumnElement[bool]:
    """The SQL condition for the organization's contacts that may match (`search.matches`
    decides): those holding every term of the search, found by index; a search of one or
    two digits scans the numbers."""
    if not search.pieces:
        return Contact.phone_number.contains(search.digits, autoescape=True)
    terms, needed = search.terms(keyring, org_id)
    # Written into the SQL, not sent as parameters: PostgreSQL plans for these very terms
    # (how many contacts hold each), where a plan cached for any terms would guess, and
    # guess badly.
    holders = (
        select(ContactSearchTerm.contact_id)
        .where(
            ContactSearchTerm.term.in_(
                bindparam("search_terms", terms, expanding=True, literal_execute=True)
            )
        )
        .group_by(ContactSearchTerm.contact_id)
        .having(func.count() >= bindparam("search_needed", needed, literal_execute=True))
    )
    return Contact.id.in_(holders)


def holds_every(contact_id: Any, pieces: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    """Whether the contact `contact_id` (a column of the enclosing query) holds a term
    passing each test in `pieces` (one per piece of a search: its terms under every key):
    the candidates of `matching`, tested one contact at a time by index probes, for a
    query that walks its rows in order and stops early."""
    return and_(
        true(),
        *(exists().where(ContactSearchTerm.contact_id == contact_id, piece) for piece in pieces),
    )


async def list_contacts(
    keyring: Keyring,
    session: AsyncSession,
    principal: Principal,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[ContactView], str | None]:
    """The organization's contacts in the order they were added (names are encrypted: the
    database cannot sort by them); with `q`, those whose name or number holds it."""
    search = parse_search(q) if q else None
    after = decode_cursor(cursor) if cursor else None
    stmt = select(Contact).where(Contact.org_id == principal.org_id)
    if search is not None:
        stmt = stmt.where(matching(search, keyring, principal.org_id))
    found: list[ContactView] = []
    batch = limit + 1
    # Candidates the real test turns down are skipped; the next batch fills the page.
    while len(found) <= limit:
        page = stmt if after is None else stmt.where(Contact.id > after)
        rows = (await session.scalars(page.order_by(Contact.id).limit(batch))).all()
        for contact in rows:
            after = contact.id
            view = _view(keyring, contact)
            if search is None or search.matches(view.name, view.phone_number):
                found.append(view)
                if len(found) > limit:
                    break
        if len(rows) < batch:
            break
    return split_page(found, limit, lambda v: v.id)
