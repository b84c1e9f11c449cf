"""Server-Sent Events: new messages and status changes, live, for the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse

from app.deps import ContextDep, CurrentUser, StreamTokenHash
from app.schemas.errors import errors
from app.schemas.messaging import StreamTicketOut
from app.services import streams

router = APIRouter(prefix="/v1", tags=["events"])


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {"$ref": "#/components/schemas/StreamEvent"},
                }
            },
            "description": "`message.created` (messages and notes), `message.updated` "
            "(status changes), `conversation.updated` (status or assignee changed, or "
            "reopened by a new inbound message: the conversation as the API shows it to "
            "you), and `resync` when missed events can no longer be replayed.",
        }
    },
    operation_id="stream_events",
    openapi_extra=errors("too_many_streams"),
)
async def events(
    ctx: ContextDep,
    token_hash: StreamTokenHash,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> EventSourceResponse:
    """Stream the caller's events; reconnect with `Last-Event-ID` to get what you missed.

    Authenticate with `Authorization: Bearer`, or (a browser's EventSource) with
    `?ticket=` from `POST /v1/events/tickets`. The server ends the stream when the token is revoked, the user deactivated or
    removed from a group they could read when it opened; 429 past the per-user cap."""
    stream = await streams.open_stream(
        ctx.streams,
        ctx.sessionmaker,
        ctx.events,
        token_hash,
        last_event_id,
        max_per_user=ctx.settings.events_max_streams_per_user,
    )
    return EventSourceResponse(
        streams.stream_frames(ctx.streams, stream),
        ping=int(ctx.settings.events_heartbeat_seconds),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/events/tickets", status_code=201, response_model=StreamTicketOut)
async def create_stream_ticket(ctx: ContextDep, principal: CurrentUser) -> StreamTicketOut:
    """A single-use ticket, valid 60 seconds, that opens one event stream as this token:
    `new EventSource("/v1/events?ticket=...")`. A used, expired or unknown ticket is 401
    `invalid_ticket`; the stream then follows the token (revoked: it ends)."""
    issued = await streams.issue_ticket(ctx.streams, principal)
    return StreamTicketOut(ticket=issued.ticket, expires_in=issued.expires_in)
