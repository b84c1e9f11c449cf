"""Open event streams: who may keep one open, and how many one user may hold.

A stream authenticates once, when it opens; what it may see can change while it stays
open for hours. So each process's `StreamGuard` checks its open streams again every
`EVENTS_AUTH_RECHECK_SECONDS` (one query for all of them): a stream whose token was
revoked, whose user was deactivated, or whose user left one of the groups it could read
when it opened, is ended at once (its buffered events dropped), so that within a few
seconds of the change, on every process, it sends nothing more. If the database cannot
be asked for longer than `_STALE_AFTER_SECONDS`, every stream is ended (fail closed):
clients reconnect, and authenticate again, when it answers.

Each user may hold at most `EVENTS_MAX_STREAMS_PER_USER` streams across all processes
(a slot per stream in Redis, kept alive by the guard; in process on the embedded
default). One more is refused with 429 `too_many_streams`.

A browser's `EventSource` cannot send an `Authorization` header, so a token may buy a
ticket (`issue_ticket`): single use, valid `TICKET_SECONDS`, kept only as its SHA-256
beside the hash of the token that bought it. A stream opened with a ticket is that
token's stream in every way: checked against it by the guard, charged to its rate
limit, counted in its user's slots. Tokens themselves are never taken from a URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import ServiceUnavailable, TooManyStreams, Unauthorized
from app.infra.event_bus import EventBus, Subscription, sse_stream
from app.infra.limiters import ApiRateLimiter
from app.infra.stream_slots import SLOT_TTL_SECONDS, StreamSlots
from app.infra.stream_tickets import TicketStore, TicketStoreUnavailable
from app.metrics import EVENT_STREAMS, RATE_LIMIT_REFUSALS
from app.models import ApiToken, GroupMember, User
from app.security import hash_token, new_stream_ticket
from app.services.auth import Principal, principal_of, token_owner

log = logging.getLogger(__name__)

# Past this long without a successful check, streams are ended (fail closed).
_STALE_AFTER_SECONDS = 4.0
_STREAMS_REFUSED = RATE_LIMIT_REFUSALS.labels("streams")
# How often the guard keeps its streams' slots alive (they expire after SLOT_TTL_SECONDS).
_SLOT_REFRESH_SECONDS = SLOT_TTL_SECONDS / 3
# How long a stream ticket may wait to be used (the contract's 60 seconds).
TICKET_SECONDS = 60


@dataclass(eq=False)
class OpenStream:
    """One caller's event stream, from the moment it is allowed to open."""

    principal: Principal
    token_hash: str
    groups: frozenset[str]
    subscription: Subscription
    slot_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def slot(self) -> tuple[str, str]:
        return str(self.principal.user_id), self.slot_id


class StreamGuard:
    """This process's open streams, checked again and again against the directory."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        slots: StreamSlots,
        tickets: TicketStore,
        *,
        recheck_seconds: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.slots = slots
        self.tickets = tickets
        self._recheck = recheck_seconds
        self._open: set[OpenStream] = set()
        self._ended: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._last_ok = time.monotonic()
        self._last_refresh = time.monotonic()

    def __len__(self) -> int:
        return len(self._open)

    def register(self, stream: OpenStream) -> None:
        """Watch a stream from now on."""
        if not self._open:
            self._last_ok = time.monotonic()
        self._open.add(stream)
        EVENT_STREAMS.inc()
        self._wake.set()

    def unregister(self, stream: OpenStream) -> None:
        """Forget a stream that ended; its slot is given back on the next round."""
        if stream in self._open:
            self._open.discard(stream)
            EVENT_STREAMS.dec()
            self._ended.append(stream.slot)

    async def run_forever(self) -> None:
        """Check every `recheck_seconds` while any stream is open; never raises."""
        while True:
            if not self._open and not self._ended:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._recheck)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("stream check failed", exc_info=True)

    async def check_once(self) -> int:
        """End the streams their callers may no longer keep; returns how many."""
        ended = 0
        streams = list(self._open)
        if streams:
            try:
                valid, groups = await self._directory(streams)
            except Exception as exc:
                if time.monotonic() - self._last_ok < _STALE_AFTER_SECONDS:
                    log.warning(
                        "could not check open streams", extra={"fields": {"error": repr(exc)}}
                    )
                    return 0
                log.warning("open streams unchecked for too long: ending them")
                for stream in streams:
                    self._end(stream)
                return len(streams)
            self._last_ok = time.monotonic()
            for stream in streams:
                if stream.token_hash not in valid or not stream.groups <= groups.get(
                    str(stream.principal.user_id), frozenset()
                ):
                    self._end(stream)
                    ended += 1
        await self._tend_slots()
        return ended

    def _end(self, stream: OpenStream) -> None:
        stream.subscription.end()
        self.unregister(stream)

    async def _directory(
        self, streams: list[OpenStream]
    ) -> tuple[set[str], dict[str, frozenset[str]]]:
        hashes = {s.token_hash for s in streams}
        user_ids = {s.principal.user_id for s in streams}
        async with self._sessionmaker() as session:
            valid = set(
                (
                    await session.scalars(
                        select(ApiToken.token_hash)
                        .join(User, User.id == ApiToken.user_id)
                        .where(
                            ApiToken.token_hash.in_(hashes),
                            ApiToken.revoked_at.is_(None),
                            User.deactivated_at.is_(None),
                        )
                    )
                ).all()
            )
            rows = await session.execute(
                select(GroupMember.user_id, GroupMember.group_id).where(
                    GroupMember.user_id.in_(user_ids)
                )
            )
            groups: dict[str, set[str]] = {}
            for user_id, group_id in rows:
                groups.setdefault(str(user_id), set()).add(str(group_id))
        return valid, {u: frozenset(g) for u, g in groups.items()}

    async def _tend_slots(self) -> None:
        ended, self._ended = self._ended, []
        try:
            if ended:
                await self.slots.give_back(ended)
            if self._open and time.monotonic() - self._last_refresh >= _SLOT_REFRESH_SECONDS:
                self._last_refresh = time.monotonic()
                await self.slots.refresh([s.slot for s in self._open])
        except Exception as exc:
            # Slots not given back expire on their own.
            log.warning("stream slots not updated", extra={"fields": {"error": repr(exc)}})


async def _caller(session: AsyncSession, digest: str) -> tuple[Principal, frozenset[str]]:
    row = (await session.execute(token_owner(digest))).first()
    principal = principal_of(digest, row)
    groups = await session.scalars(
        select(GroupMember.group_id).where(GroupMember.user_id == principal.user_id)
    )
    return principal, frozenset(str(g) for g in groups)


@dataclass(frozen=True)
class StreamTicket:
    """A ticket as its buyer sees it, once."""

    ticket: str
    expires_in: int


def _tickets_unavailable(exc: TicketStoreUnavailable, doing: str) -> ServiceUnavailable:
    log.warning(f"stream ticket not {doing}", extra={"fields": {"error": str(exc)}})
    return ServiceUnavailable(
        f"Event stream tickets cannot be {doing} right now; try again shortly.",
        code="tickets_unavailable",
    )


async def issue_ticket(guard: StreamGuard, principal: Principal) -> StreamTicket:
    """A single-use ticket that opens one stream as `principal`'s token, for
    `TICKET_SECONDS`; only its hash is kept (503 when the shared store cannot be asked)."""
    ticket = new_stream_ticket()
    try:
        await guard.tickets.put(hash_token(ticket), principal.token_hash, TICKET_SECONDS)
    except TicketStoreUnavailable as exc:
        raise _tickets_unavailable(exc, "issued") from exc
    return StreamTicket(ticket, TICKET_SECONDS)


async def redeem_ticket(guard: StreamGuard, limits: ApiRateLimiter, ticket: str) -> str:
    """The token hash a ticket stands for, the ticket used up; charged to that token's
    rate limit like any request it makes. 401 `invalid_ticket` when the ticket is
    unknown, used or expired."""
    try:
        digest = await guard.tickets.take(hash_token(ticket))
    except TicketStoreUnavailable as exc:
        raise _tickets_unavailable(exc, "checked") from exc
    if digest is None:
        raise Unauthorized(
            "The stream ticket is unknown, used or expired: tickets open one stream, "
            f"within {TICKET_SECONDS} seconds. Get a new one (POST /v1/events/tickets).",
            code="invalid_ticket",
        )
    await limits.charge(digest)
    return digest


async def open_stream(
    guard: StreamGuard,
    sessionmaker: async_sessionmaker[AsyncSession],
    events: EventBus,
    token_hash: str,
    last_event_id: str | None,
    *,
    max_per_user: int,
) -> OpenStream:
    """Authenticate a new stream by its token's hash (a bearer token's, or the one a
    ticket stands for) and take its slot (429 past the user's cap). The session is
    closed at once: a stream must not hold a connection for its life."""
    async with sessionmaker() as session:
        principal, groups = await _caller(session, token_hash)
    subscription = events.subscribe(
        str(principal.user_id), str(principal.org_id), last_event_id, groups
    )
    stream = OpenStream(principal, token_hash, groups, subscription)
    if not await guard.slots.take(*stream.slot, max_per_user):
        _STREAMS_REFUSED.inc()
        raise TooManyStreams(
            f"{principal.username} already has {max_per_user} event streams open; close one first.",
            details={"max_streams": max_per_user},
        )
    return stream


async def stream_frames(
    guard: StreamGuard, stream: OpenStream, **options: Any
) -> AsyncIterator[dict[str, Any]]:
    """The stream's SSE frames, watched by the guard for as long as it is open."""
    guard.register(stream)
    try:
        async for frame in sse_stream(stream.subscription, **options):
            yield frame
    finally:
        guard.unregister(stream)
