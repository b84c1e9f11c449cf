"""Query parameters shared by list endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query


@dataclass(frozen=True)
class PageQuery:
    limit: int
    cursor: str | None


async def _page_query(
    limit: Annotated[int, Query(ge=1, le=200, description="Items per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="From `next_cursor`.")] = None,
) -> PageQuery:
    return PageQuery(limit=limit, cursor=cursor)


PageParams = Annotated[PageQuery, Depends(_page_query)]
