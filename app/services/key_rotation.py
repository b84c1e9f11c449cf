"""Key rotation: everything stored under an older key is sealed again under the newest
(message bodies, unrouted texts, auto-reply and after-hours texts, kept idempotent
responses, contact names with their search terms)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import Keyring
from app.models import Contact, Group, IdempotencyRecord, Message, UnroutedMessage, User
from app.services import contacts
from app.services.sealing import (
    open_after_hours,
    open_auto_reply,
    open_body,
    open_contact_name,
    open_response,
    seal_after_hours,
    seal_auto_reply,
    seal_body,
    seal_response,
)


async def reencrypt_bodies(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring, batch: int = 500
) -> int:
    """Re-encrypt everything stored under an older key (message bodies, unrouted texts,
    auto-reply and after-hours texts, kept idempotent responses, contact names, whose
    search terms are written again under the new key in the same transaction); returns
    how many values changed."""
    changed = 0
    for model, column in (
        (Message, "body_ciphertext"),
        (UnroutedMessage, "body_ciphertext"),
        (User, "auto_reply_ciphertext"),
        (Group, "after_hours_ciphertext"),
        (IdempotencyRecord, "response_ciphertext"),
    ):
        changed += await _reencrypt_table(sessions, keyring, model, column, batch)
    return changed + await _reencrypt_contacts(sessions, keyring, batch)


async def _reencrypt_contacts(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring, batch: int
) -> int:
    changed = 0
    last = None
    while True:
        async with sessions() as session:
            stmt = select(Contact).order_by(Contact.id).limit(batch)
            if last is not None:
                stmt = stmt.where(Contact.id > last)
            rows = (await session.scalars(stmt)).all()
            if not rows:
                return changed
            for contact in rows:
                if keyring.needs_reencryption(contact.name_ciphertext):
                    name = open_contact_name(
                        keyring, contact.id, contact.org_id, contact.name_ciphertext
                    )
                    await contacts.reseal(session, keyring, contact, name)
                    changed += 1
            last = rows[-1].id
            await session.commit()


def _reseal(keyring: Keyring, row: Any, blob: bytes) -> bytes:
    if isinstance(row, Message):
        return seal_body(keyring, row.id, row.org_id, open_body(keyring, row.id, row.org_id, blob))
    if isinstance(row, UnroutedMessage):
        return keyring.encrypt(keyring.decrypt(blob, row.id.bytes), row.id.bytes)
    if isinstance(row, User):
        return seal_auto_reply(keyring, row.id, open_auto_reply(keyring, row.id, blob))
    if isinstance(row, Group):
        return seal_after_hours(keyring, row.id, open_after_hours(keyring, row.id, blob))
    assert isinstance(row, IdempotencyRecord)
    response = open_response(keyring, row.org_id, row.user_id, row.key, blob)
    return seal_response(keyring, row.org_id, row.user_id, row.key, response)


async def _reencrypt_table(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    model: Any,
    column: str,
    batch: int,
) -> int:
    changed = 0
    keys = list(model.__table__.primary_key.columns)
    last: tuple[Any, ...] | None = None
    while True:
        async with sessions() as session:
            stmt = select(model).order_by(*keys).limit(batch)
            if last is not None:
                stmt = stmt.where(tuple_(*keys) > tuple_(*last))
            rows = (await session.scalars(stmt)).all()
            if not rows:
                return changed
            for row in rows:
                blob = getattr(row, column)
                if blob is not None and keyring.needs_reencryption(blob):
                    setattr(row, column, _reseal(keyring, row, blob))
                    changed += 1
            last = tuple(getattr(rows[-1], k.key) for k in keys)
            await session.commit()
