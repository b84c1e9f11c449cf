"""Keyset pagination over time-ordered ids: stable while rows are added."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import AppError

T = TypeVar("T")
MAX_LIMIT = 200


def encode_cursor(last_id: uuid.UUID) -> str:
    """An opaque cursor naming the last row of a page."""
    return base64.urlsafe_b64encode(last_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    """The row id a cursor names; a 400 for anything we did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError):
        raise AppError("The cursor is not one this API returned.", code="invalid_cursor") from None


def apply_keyset(
    stmt: Select[Any],
    id_column: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
    *,
    newest_first: bool = False,
    within: InstrumentedAttribute[Any] | None = None,
) -> Select[Any]:
    """Limit a query to the page after `cursor`, fetching one extra row to detect more.

    `within` names a column the query fixes to one value (a conversation): ordering by
    it first lets PostgreSQL walk the composite index instead of the primary key.
    """
    if cursor:
        last = decode_cursor(cursor)
        stmt = stmt.where(id_column < last if newest_first else id_column > last)
    columns = [within, id_column] if within is not None else [id_column]
    return stmt.order_by(*(c.desc() if newest_first else c.asc() for c in columns)).limit(limit + 1)


async def fetch_page(
    session: AsyncSession,
    stmt: Select[Any],
    id_column: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
    *,
    newest_first: bool = False,
    within: InstrumentedAttribute[Any] | None = None,
) -> tuple[list[Any], str | None]:
    """One page of rows of a single-entity query, and the cursor of the next page."""
    rows = (
        await session.scalars(
            apply_keyset(stmt, id_column, limit, cursor, newest_first=newest_first, within=within)
        )
    ).all()
    return split_page(rows, limit, lambda row: row.id)


def split_page(rows: Sequence[T], limit: int, id_of: Any) -> tuple[list[T], str | None]:
    """The page's rows and the cursor of the next page, if there is one."""
    items = list(rows[:limit])
    if len(rows) > limit and items:
        return items, encode_cursor(id_of(items[-1]))
    return items, None
