"""The audit log of configuration changes: who changed routing, when, and what."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditEntry
from app.services.pagination import fetch_page


def record(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    actor: str,
    action: str,
    target_type: str,
    target_id: uuid.UUID | str | None,
    changes: dict[str, Any] | None = None,
) -> None:
    """Add an audit entry to the caller's transaction (committed with the change itself)."""
    session.add(
        AuditEntry(
            org_id=org_id,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            changes=changes or {},
        )
    )


async def list_entries(
    session: AsyncSession, org_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[AuditEntry], str | None]:
    """An organization's audit entries, newest first."""
    return await fetch_page(
        session,
        select(AuditEntry).where(AuditEntry.org_id == org_id),
        AuditEntry.id,
        limit,
        cursor,
        newest_first=True,
    )
