"""Query parameters shared by list endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

from app.vocabulary import MAX_SEARCH_CHARS


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


SearchText = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_SEARCH_CHARS,
        description="A name or a number: every word of it found in a name (case and accents "
        "ignored; a word of one or two letters at the start of one of the name's words), or "
        "its digits anywhere in a number.",
        examples=["mar"],
    ),
]
