"""Query parameters shared by list endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

from app.vocabulary import MAX_SEARCH_CHARS

# A page's bounds: the API route declares them, fast paths read by them.
MIN_LIMIT, MAX_LIMIT, DEFAULT_LIMIT = 1, 200, 50
CURSOR_MAX_CHARS = 200


@dataclass(frozen=True)
class PageQuery:
    limit: int
    cursor: str | None


async def _page_query(
    limit: Annotated[
        int, Query(ge=MIN_LIMIT, le=MAX_LIMIT, description="Items per page.")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=CURSOR_MAX_CHARS, description="From `next_cursor`.")
    ] = None,
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
