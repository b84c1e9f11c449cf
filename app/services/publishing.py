"""Telling the users who see a conversation what happened in it: message events on the
event bus. A failure here loses nothing stored: clients resync through the REST API."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.models import Conversation
from app.services import conversations
from app.services.message_rows import MessageView, render_message

log = logging.getLogger(__name__)


async def publish(
    ctx: AppContext,
    session: AsyncSession | None,
    event_type: str,
    messages: Sequence[MessageView],
    audience: tuple[str, ...] | None = None,
    bodies: Sequence[str] | None = None,
    audiences: Sequence[tuple[str, ...]] | None = None,
) -> None:
    """Tell the users who see each message's conversation (`audience` for all of them,
    or `audiences` one per message, when the caller knows it; else read through
    `session`); a failure here loses nothing stored (clients resync through the REST
    API). `bodies`: the messages' plain bodies, when the caller has them (nothing to
    decrypt then). The events go out together, in order."""
    seen: dict[uuid.UUID, tuple[str, ...]] = {}
    sends: list[tuple[MessageView, Awaitable[str]]] = []
    for i, m in enumerate(messages):
        try:
            if audiences is not None:
                seen[m.conversation_id] = audiences[i]
            elif audience is not None:
                seen[m.conversation_id] = audience
            elif m.conversation_id not in seen:
                assert session is not None
                conv = await session.get(Conversation, m.conversation_id)
                seen[m.conversation_id] = (
                    await conversations.audience_of(session, conv) if conv else ()
                )
            seen_by = seen[m.conversation_id]
            if seen_by:
                data = render_message(ctx.keyring, m, bodies[i] if bodies else None)
                sends.append((m, ctx.events.publish(event_type, str(m.org_id), seen_by, data)))
        except Exception as exc:
            _not_published(m, exc)
    results = await asyncio.gather(*(send for _, send in sends), return_exceptions=True)
    for (m, _), result in zip(sends, results, strict=True):
        if isinstance(result, Exception):
            _not_published(m, result)
        elif isinstance(result, BaseException):
            raise result


def _not_published(m: MessageView, exc: Exception) -> None:
    # Expected while Redis is down: one line, no traceback.
    log.warning(
        "event not published",
        extra={"fields": {"message_id": str(m.id), "error": repr(exc)}},
    )
