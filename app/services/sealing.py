"""Encryption at rest of everything that holds message text or patient data: bodies,
auto-reply texts, groups' after-hours texts, stored idempotent responses, contact names.
Each ciphertext is bound to its row (associated data), so one copied to another row or
tenant does not decrypt."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from app.crypto import Keyring


def _message_aad(message_id: uuid.UUID, org_id: uuid.UUID) -> bytes:
    return message_id.bytes + org_id.bytes


def seal_body(keyring: Keyring, message_id: uuid.UUID, org_id: uuid.UUID, body: str) -> bytes:
    """A message body as stored: encrypted under the newest key."""
    return keyring.encrypt(body, _message_aad(message_id, org_id))


def open_body(keyring: Keyring, message_id: uuid.UUID, org_id: uuid.UUID, blob: bytes) -> str:
    """The plain body of a stored message."""
    return keyring.decrypt(blob, _message_aad(message_id, org_id))


def seal_auto_reply(keyring: Keyring, user_id: uuid.UUID, text: str) -> bytes:
    """A user's auto-reply text as stored."""
    return keyring.encrypt(text, b"auto-reply:" + user_id.bytes)


def open_auto_reply(keyring: Keyring, user_id: uuid.UUID, blob: bytes | None) -> str:
    """A user's auto-reply text ("" when never set)."""
    return "" if blob is None else keyring.decrypt(blob, b"auto-reply:" + user_id.bytes)


def seal_after_hours(keyring: Keyring, group_id: uuid.UUID, text: str) -> bytes:
    """A group's after-hours reply text as stored."""
    return keyring.encrypt(text, b"after-hours:" + group_id.bytes)


def open_after_hours(keyring: Keyring, group_id: uuid.UUID, blob: bytes | None) -> str:
    """A group's after-hours reply text ("" when never set)."""
    return "" if blob is None else keyring.decrypt(blob, b"after-hours:" + group_id.bytes)


def _idempotency_aad(org_id: uuid.UUID, user_id: uuid.UUID, key: str) -> bytes:
    return b"idempotency:" + org_id.bytes + user_id.bytes + key.encode()


def seal_response(
    keyring: Keyring, org_id: uuid.UUID, user_id: uuid.UUID, key: str, response: dict[str, Any]
) -> bytes:
    """A first response kept for Idempotency-Key replays."""
    return keyring.encrypt(orjson.dumps(response).decode(), _idempotency_aad(org_id, user_id, key))


def open_response(
    keyring: Keyring, org_id: uuid.UUID, user_id: uuid.UUID, key: str, blob: bytes
) -> dict[str, Any]:
    """The first response to replay."""
    data: dict[str, Any] = orjson.loads(
        keyring.decrypt(blob, _idempotency_aad(org_id, user_id, key))
    )
    return data


def _contact_aad(contact_id: uuid.UUID, org_id: uuid.UUID) -> bytes:
    return b"contact:" + contact_id.bytes + org_id.bytes


def seal_contact_name(
    keyring: Keyring, contact_id: uuid.UUID, org_id: uuid.UUID, name: str
) -> bytes:
    """A contact's name as stored: encrypted under the newest key."""
    return keyring.encrypt(name, _contact_aad(contact_id, org_id))


def open_contact_name(
    keyring: Keyring, contact_id: uuid.UUID, org_id: uuid.UUID, blob: bytes
) -> str:
    """The plain name of a stored contact."""
    return keyring.decrypt(blob, _contact_aad(contact_id, org_id))
