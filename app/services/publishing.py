"""Telling the users who see a conversation what happened in it: message events and
`conversation.updated` on the event bus. A failure here loses nothing stored: clients
resync through the REST API."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.infra.event_bus import CONVERSATION_UPDATED
from app.models import Conversation, User
from app.services import conversation_views, conversations
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


async def publish_conversation(
    ctx: AppContext, conversation_id: uuid.UUID, session: AsyncSession | None = None
) -> None:
    """Tell everyone who sees a conversation how it looks now (`conversation.updated`):
    one event per user, each with that user's unread count. Reads through `session`,
    or a session of its own."""
    try:
        if session is None:
            async with ctx.sessionmaker() as own:
                await _publish_conversation(ctx, own, conversation_id)
        else:
            await _publish_conversation(ctx, session, conversation_id)
    except Exception as exc:
        log.warning(
            "event not published",
            extra={"fields": {"conversation_id": str(conversation_id), "error": repr(exc)}},
        )


async def _publish_conversation(
    ctx: AppContext, session: AsyncSession, conversation_id: uuid.UUID
) -> None:
    conv = await session.get(Conversation, conversation_id)
    view = await conversation_views.view_of(ctx.keyring, session, conversation_id, None)
    if conv is None or view is None:
        return
    audience = [uuid.UUID(u) for u in await conversations.audience_of(session, conv)]
    if not audience:
        return
    unread = dict(
        (
            await session.execute(
                select(User.id, conversations.unread_count(conversation_id, User.id)).where(
                    User.id.in_(audience)
                )
            )
        ).all()
    )
    results = await asyncio.gather(
        *(
            ctx.events.publish(
                CONVERSATION_UPDATED,
                str(view.org_id),
                (str(user_id),),
                view.render(int(unread.get(user_id, 0))),
            )
            for user_id in audience
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
