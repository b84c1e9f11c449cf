"""Server-Sent Events: new messages and status changes, live, for the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse

from app.deps import ContextDep, StreamingUser
from app.schemas.common import ERROR_RESPONSES
from app.services.events import sse_stream

router = APIRouter(prefix="/v1", tags=["events"], responses=ERROR_RESPONSES)


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`message.created`, `message.updated`, and `resync` when "
            "missed events can no longer be replayed.",
        }
    },
)
async def events(
    ctx: ContextDep,
    user: StreamingUser,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> EventSourceResponse:
    """Stream the caller's events; reconnect with `Last-Event-ID` to get what you missed."""
    subscription = ctx.events.subscribe(str(user.user_id), str(user.org_id), last_event_id)
    return EventSourceResponse(
        sse_stream(subscription),
        ping=int(ctx.settings.events_heartbeat_seconds),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
