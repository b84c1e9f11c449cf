"""Extensions: the aliases users and groups are addressed by, one owner each."""

from __future__ import annotations

import uuid

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict
from app.models import (
    Extension,
)


async def ensure_extension_free(
    session: AsyncSession,
    org_id: uuid.UUID,
    extension: str,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> None:
    existing = await session.get(Extension, (org_id, extension))
    if existing is None:
        return
    if (user_id and existing.user_id == user_id) or (group_id and existing.group_id == group_id):
        return
    owner = "a user" if existing.user_id else "a group"
    raise Conflict(
        f"Extension {extension} is already used by {owner} of this organization.",
        code="extension_taken",
        details={"extension": extension},
    )


async def set_extension(
    session: AsyncSession,
    org_id: uuid.UUID,
    extension: str | None,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> None:
    """Give a user or group exactly this extension (or none)."""
    owner_col = Extension.user_id if user_id else Extension.group_id
    owner_id = user_id or group_id
    if extension is not None:
        await ensure_extension_free(session, org_id, extension, user_id=user_id, group_id=group_id)
    await session.execute(
        delete(Extension).where(
            Extension.org_id == org_id,
            owner_col == owner_id,
            Extension.extension != (extension or ""),
        )
    )
    if extension is not None and await session.get(Extension, (org_id, extension)) is None:
        session.add(
            Extension(org_id=org_id, extension=extension, user_id=user_id, group_id=group_id)
        )
    await session.flush()
