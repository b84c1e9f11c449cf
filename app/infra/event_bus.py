"""Real-time message events for `GET /v1/events`: an event bus and its SSE framing.

The messaging service publishes `message.created` / `message.updated` with the user
ids allowed to see the message (its audience), and `conversation.updated`; every SSE client subscribes as one
user of one organization and receives only events of that organization whose
audience names it.

Two buses share one local fan-out:

- `RedisEventBus`: one Redis Stream shared by every process; each process runs ONE
  reader task (one blocking XREAD) and fans entries out to its local subscribers,
  so a thousand SSE clients cost one Redis connection for reading, not a thousand.
- `InProcessEventBus`: the embedded default (no Redis, one process), a ring buffer.

Event ids are Redis stream ids (`<ms>-<seq>`, ordered), so a client's
`Last-Event-ID` can be replayed from what is retained (bounded by age and count).
When that is impossible (unknown id, id older than what is retained, a client too
slow to keep up) the subscriber gets a `Resync` marker: reload through the REST API.
Each subscriber buffers at most `max_queue` events; a subscriber whose buffer fills
is dropped (after a `Resync`), so a slow client never blocks others nor grows memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

import orjson
from redis.exceptions import RedisError, ResponseError

from app.infra.coalesce import Coalescer

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

MESSAGE_CREATED: Final = "message.created"
MESSAGE_UPDATED: Final = "message.updated"
# A conversation's status or assignee changed: its data is the conversation as shown.
CONVERSATION_UPDATED: Final = "conversation.updated"

# Why a subscriber is told to reload its state through the REST API.
RESYNC_UNKNOWN_ID: Final = "unknown_last_event_id"  # malformed, or never issued here
RESYNC_EXPIRED: Final = "last_event_id_expired"  # older than what is retained
RESYNC_TOO_FAR_BEHIND: Final = "too_far_behind"  # its bounded buffer filled up
RESYNC_EVENTS_LOST: Final = "events_lost"  # this process missed events (long Redis outage)

# Events buffered per subscriber (shared Event objects, so this costs pointers, not
# copies); also the most events one Last-Event-ID replay may return.
DEFAULT_MAX_QUEUE: Final = 1000
# Reconnection delay suggested to browsers (the SSE `retry:` field).
DEFAULT_RETRY_MS: Final = 3000

_REPLAY_PAGE: Final = 500
_READ_COUNT: Final = 500
_READ_BLOCK_MS: Final = 5000
# With nobody subscribed in this process, the reader only keeps its place in the
# stream: it reads this often (in bulk), or at once when someone subscribes.
_IDLE_READ_SECONDS: Final = 1.0
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0

_ID_RE: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_U64: Final = 2**64

IdKey = tuple[int, int]


class EventBusError(Exception):
    """Base class of event bus failures."""


class EventBusUnavailable(EventBusError):
    """The bus's backend (Redis) cannot be reached.

    From `publish`: the message is already stored, so callers log this and go on;
    clients catch up through the REST API. From a subscription: the stream ends and
    the client reconnects later with its Last-Event-ID.
    """


@dataclass
class Event:
    """One event as delivered to subscribers; `data` is shared between them: read-only."""

    id: str
    type: str
    org_id: str
    audience: tuple[str, ...]
    data: dict[str, Any]
    # The JSON text of `data`, kept so fanning one event out to many SSE clients
    # serialises it once rather than once per client.
    _json: str | None = field(default=None, repr=False, compare=False)

    def json(self) -> str:
        """`data` as compact JSON text (computed once)."""
        if self._json is None:
            self._json = orjson.dumps(self.data).decode()
        return self._json


@dataclass(frozen=True)
class Resync:
    """Marker: events were missed; reload state through the REST API.

    `checkpoint` is an event id the client may reconnect with afterwards (what
    happened up to it is covered by the reload), or None when there is none.
    """

    reason: str
    checkpoint: str | None


@dataclass
class _Replay:
    """What a subscription yields before live events, and the id live events must exceed."""

    items: list[Event | Resync]
    watermark: str | None


def _id_key(value: str) -> IdKey | None:
    """Parse a `<ms>-<seq>` event id into a comparable tuple; None when malformed."""
    if not _ID_RE.fullmatch(value):
        return None
    ms_text, seq_text = value.split("-")
    ms, seq = int(ms_text), int(seq_text)
    if ms >= _U64 or seq >= _U64:
        return None
    return ms, seq


def _format_id(key: IdKey) -> str:
    return f"{key[0]}-{key[1]}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _audience(audience: Iterable[str]) -> tuple[str, ...]:
    # Deduplicated (order kept) so a user named twice is not sent the event twice.
    return tuple(dict.fromkeys(audience))


class Subscription:
    """One client's live view of a bus: `async with` it, then `async for` over it.

    Yields `Event`s visible to (user_id, org_id), oldest first, preceded by the
    replay of what followed `last_event_id`. Yields `Resync` instead of a replay that
    is impossible (then goes on live), or when the subscriber fell too far behind
    (then ends). Ends when the bus stops.
    """

    def __init__(
        self,
        bus: _LocalFanOut,
        user_id: str,
        org_id: str,
        last_event_id: str | None,
        max_queue: int,
        groups: frozenset[str] | None = None,
    ) -> None:
        self.user_id = user_id
        self.org_id = org_id
        self.last_event_id = last_event_id or None
        # The groups whose conversations the user may read (None: not checked). An
        # event of another group's conversation (a replay from before the user left
        # it) is not yielded.
        self.groups = groups
        self._bus = bus
        # None in the queue means "the bus stopped".
        self._queue: asyncio.Queue[Event | Resync | None] = asyncio.Queue(maxsize=max_queue)
        self._pending: deque[Event | Resync] = deque()
        self._watermark: IdKey | None = None
        self._entered = False
        self._accepting = False
        self._done = False
        self._ended = False

    async def __aenter__(self) -> Self:
        """Register for live events, then load the replay (in that order: no gap)."""
        if self._entered:
            raise RuntimeError("a Subscription can be entered only once")
        self._entered = True
        if self._ended:
            return self
        # Live events are buffered from here on; the replay then reads what was
        # already stored, and live events it also returned are dropped by id.
        self._accepting = True
        self._bus._register(self)
        try:
            replay = await self._bus._prepare(self)
        except BaseException:
            self.close()
            raise
        if replay is not None:
            self._pending.extend(replay.items)
            if replay.watermark is not None:
                self._watermark = _id_key(replay.watermark)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Unregister; nothing is awaited, so this also runs under cancellation."""
        self.close()

    def close(self) -> None:
        """Stop receiving and release this subscriber's buffer and registration."""
        self._accepting = False
        self._done = True
        self._bus._unregister(self)
        self._pending.clear()
        _drain(self._queue)

    def __aiter__(self) -> Self:
        """The subscription is its own iterator."""
        return self

    async def __anext__(self) -> Event | Resync:
        """The next replayed or live item; waits for one."""
        if not self._entered:
            raise RuntimeError("enter the Subscription (async with) before iterating it")
        while self._pending and not self._ended:
            pending = self._pending.popleft()
            if self._may_read(pending):
                return pending
        while not self._done and not self._ended:
            item = await self._queue.get()
            if item is None:
                self._done = True
                break
            if isinstance(item, Resync):
                self._done = True
                return item
            key = _id_key(item.id)
            # Drops what the replay already returned (the replay/live seam) and
            # anything out of order, so ids only ever increase.
            if key is not None and self._watermark is not None and key <= self._watermark:
                continue
            self._watermark = key
            if self._may_read(item):
                return item
        raise StopAsyncIteration

    def _may_read(self, item: Event | Resync) -> bool:
        if self.groups is None or not isinstance(item, Event):
            return True
        group_id = item.data.get("group_id")
        return group_id is None or group_id in self.groups

    def end(self) -> None:
        """End the stream at once: nothing more is yielded, buffered events included
        (its reader may no longer see them)."""
        self._ended = True
        self._pending.clear()
        self._abort(None)

    @property
    def queued(self) -> int:
        """Live events buffered and not yet consumed."""
        return self._queue.qsize()

    def _offer(self, event: Event) -> None:
        # Called by the bus for every visible event; never blocks the publisher.
        if not self._accepting:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._abort(Resync(RESYNC_TOO_FAR_BEHIND, event.id))

    def _abort(self, marker: Resync | None) -> None:
        # Frees the buffer at once and leaves only the marker, so a stalled client
        # holds one item however long it takes to go away.
        self._accepting = False
        self._bus._unregister(self)
        _drain(self._queue)
        self._queue.put_nowait(marker)


def _drain(queue: asyncio.Queue[Event | Resync | None]) -> None:
    while not queue.empty():
        queue.get_nowait()


class EventBus(Protocol):
    """What the service and the events router need from a bus."""

    async def start(self) -> None:
        """Start background work (the Redis reader); call once at application start-up."""

    async def stop(self) -> None:
        """Stop background work and end every subscription."""

    async def publish(
        self, type: str, org_id: str, audience: Iterable[str], data: Mapping[str, Any]
    ) -> str:
        """Publish an event to the users in `audience`; returns its id.

        Raises `EventBusUnavailable` when the backend cannot be reached.
        """
        ...

    def subscribe(
        self,
        user_id: str,
        org_id: str,
        last_event_id: str | None = None,
        groups: frozenset[str] | None = None,
    ) -> Subscription:
        """A subscription (not yet registered: that happens on `async with`)."""
        ...

    @property
    def subscriber_count(self) -> int:
        """Subscriptions currently registered in this process."""
        ...


class _LocalFanOut:
    """Registry of this process's subscribers, indexed by user id for cheap fan-out."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._max_queue = max_queue
        self._by_user: dict[str, set[Subscription]] = {}
        self._count = 0

    def subscribe(
        self,
        user_id: str,
        org_id: str,
        last_event_id: str | None = None,
        groups: frozenset[str] | None = None,
    ) -> Subscription:
        """A subscription for one user of one organization (registered on `async with`)."""
        return Subscription(self, user_id, org_id, last_event_id, self._max_queue, groups)

    @property
    def subscriber_count(self) -> int:
        """Subscriptions currently registered in this process."""
        return self._count

    def _register(self, sub: Subscription) -> None:
        subs = self._by_user.setdefault(sub.user_id, set())
        if sub not in subs:
            subs.add(sub)
            self._count += 1

    def _unregister(self, sub: Subscription) -> None:
        subs = self._by_user.get(sub.user_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._count -= 1
        if not subs:
            del self._by_user[sub.user_id]

    def _has_local(self, audience: Iterable[str]) -> bool:
        return any(user_id in self._by_user for user_id in audience)

    def _dispatch(self, event: Event) -> None:
        for user_id in event.audience:
            subs = self._by_user.get(user_id)
            if not subs:
                continue
            # A copy: an overflowing subscriber unregisters itself during the loop.
            for sub in tuple(subs):
                # User ids are unique anyway; the org check keeps tenants apart even
                # if a caller ever passed a wrong audience.
                if sub.org_id == event.org_id:
                    sub._offer(event)

    def _end_all(self, marker: Resync | None) -> None:
        for subs in list(self._by_user.values()):
            for sub in tuple(subs):
                sub._abort(marker)

    async def _prepare(self, sub: Subscription) -> _Replay | None:
        raise NotImplementedError


class InProcessEventBus(_LocalFanOut):
    """The embedded default's bus: one process, events retained in a ring buffer."""

    def __init__(
        self,
        retention_seconds: float = 600,
        max_retained: int = 100_000,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        super().__init__(max_queue)
        if max_retained < 1:
            raise ValueError("max_retained must be at least 1")
        self._retention_ms = retention_seconds * 1000
        self._max_retained = max_retained
        self._buffer: deque[tuple[IdKey, Event]] = deque()
        # Ids are `<ms>-<seq>` like Redis's. Everything up to `_floor` is gone (at
        # start: whatever an earlier process issued), everything after it up to
        # `_last` is retained, so a Last-Event-ID is replayable iff in [_floor, _last].
        start: IdKey = (_now_ms(), 0)
        self._floor: IdKey = start
        self._last: IdKey = start

    async def start(self) -> None:
        """Nothing to start: the bus lives in this process."""

    async def stop(self) -> None:
        """End every subscription (their SSE streams close)."""
        self._end_all(None)

    async def publish(
        self, type: str, org_id: str, audience: Iterable[str], data: Mapping[str, Any]
    ) -> str:
        """Store the event in the ring buffer and hand it to local subscribers; returns its id."""
        # A JSON round trip: subscribers see what the Redis bus would give them, and
        # the caller may mutate its dict afterwards without touching the event.
        raw = orjson.dumps(dict(data))
        now = _now_ms()
        key: IdKey = (now, 0) if now > self._last[0] else (self._last[0], self._last[1] + 1)
        event = Event(
            id=_format_id(key),
            type=type,
            org_id=org_id,
            audience=_audience(audience),
            data=orjson.loads(raw),
            _json=raw.decode(),
        )
        self._last = key
        self._buffer.append((key, event))
        if len(self._buffer) > self._max_retained:
            self._floor = self._buffer.popleft()[0]
        self._trim(now)
        self._dispatch(event)
        return event.id

    def _trim(self, now_ms: int) -> None:
        cutoff = now_ms - self._retention_ms
        while self._buffer and self._buffer[0][0][0] < cutoff:
            self._floor = self._buffer.popleft()[0]

    async def _prepare(self, sub: Subscription) -> _Replay | None:
        # Runs without awaiting, so nothing can be published between the
        # registration and this read.
        if sub.last_event_id is None:
            return None
        self._trim(_now_ms())
        checkpoint = _format_id(self._last)
        requested = _id_key(sub.last_event_id)
        if requested is None or requested > self._last:
            return _Replay([Resync(RESYNC_UNKNOWN_ID, checkpoint)], checkpoint)
        if requested < self._floor:
            return _Replay([Resync(RESYNC_EXPIRED, checkpoint)], checkpoint)
        newer: list[Event] = []
        for key, event in reversed(self._buffer):
            if key <= requested:
                break
            if sub.org_id == event.org_id and sub.user_id in event.audience:
                newer.append(event)
                if len(newer) > self._max_queue:
                    return _Replay([Resync(RESYNC_TOO_FAR_BEHIND, checkpoint)], checkpoint)
        newer.reverse()
        watermark = newer[-1].id if newer else sub.last_event_id
        return _Replay(list(newer), watermark)


# XADD and both trims in one atomic call. Age trimming uses the id Redis just made,
# i.e. Redis's clock, so app hosts with skewed clocks cannot trim fresh entries.
# ARGV: max entries, retention ms, then (type, org, audience, data) per event.
_PUBLISH_LUA: Final = """
local ids = {}
local ms = 0
for i = 3, #ARGV, 4 do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    't', ARGV[i], 'o', ARGV[i + 1], 'a', ARGV[i + 2], 'd', ARGV[i + 3])
  ids[#ids + 1] = id
  ms = tonumber(string.match(id, '^(%d+)-'))
end
local minid = ms - tonumber(ARGV[2])
if minid > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f', minid))
end
return ids
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    # Works whether the client was made with decode_responses or not.
    if name in fields:
        return fields[name]
    return fields.get(name.encode())


@dataclass(frozen=True)
class _StreamState:
    last: IdKey  # last-generated-id: the newest id ever issued
    floor: IdKey  # ids below this may have been deleted: not replayable


def _stream_state(info: Mapping[Any, Any]) -> _StreamState:
    info = {_text(k): v for k, v in info.items()}
    last = _id_key(_text(info["last-generated-id"])) or (0, 0)
    # Trimming removes the head without recording what it removed, so only an id
    # still present (or newer) is known to have nothing missing after it. This also
    # turns away ids of a stream Redis lost (flush, failover without persistence):
    # they are older than the new stream's first entry. XDEL (Redis 7) is recorded.
    first = info.get("first-entry")
    floor = (_id_key(_text(first[0])) or last) if first else last
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None:
        floor = max(floor, _id_key(_text(deleted)) or (0, 0))
    return _StreamState(last, floor)


def _stream_entries(response: Any) -> Iterator[tuple[Any, Mapping[Any, Any]]]:
    """The (id, fields) entries of an XREAD reply, whatever shape the client gives it.

    RESP2 is [[stream, entries]], RESP3 {stream: [entries]} or {stream: entries}
    depending on the redis-py version and options.
    """
    if isinstance(response, Mapping):
        for value in response.values():
            yield from _stream_entries(value)
    elif isinstance(response, list | tuple):
        if len(response) == 2 and isinstance(response[1], Mapping):
            yield response[0], response[1]
        else:
            for value in response:
                yield from _stream_entries(value)


def _is_missing_key(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "no such key" in str(exc).lower()


class RedisEventBus(_LocalFanOut):
    """Events through one Redis Stream, `{prefix}events`, shared by every app process.

    The redis client should have no socket timeout, or one longer than `block_ms`
    (the reader's blocking XREAD would otherwise time out and retry needlessly);
    `command_timeout` bounds each publish and each replay page instead.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        retention_seconds: float = 600,
        max_retained: int = 100_000,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        block_ms: int = _READ_BLOCK_MS,
        ready_timeout: float = 5.0,
        command_timeout: float = 3.0,
    ) -> None:
        super().__init__(max_queue)
        if max_retained < 1:
            raise ValueError("max_retained must be at least 1")
        self._redis = redis
        self.key = f"{prefix}events"
        self._retention_ms = int(retention_seconds * 1000)
        self._max_retained = max_retained
        self._block_ms = block_ms
        self._ready_timeout = ready_timeout
        # Publishing happens on the request path and replay before a stream starts:
        # neither may hang on an unreachable host for the OS's connect timeout.
        self._command_timeout = command_timeout
        self._publish_script = redis.register_script(_PUBLISH_LUA)
        # Events published in the same loop turn go in one script call.
        self._publishes: Coalescer[list[str | bytes], str] = Coalescer(self._publish_batch)
        self._reader: asyncio.Task[None] | None = None
        # The reader's position: the id of the last entry it has dispatched.
        self._last_id: str | None = None
        self._positioned = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        """Start the reader task; it waits for Redis if Redis is not there yet."""
        if self._reader is None:
            self._stopping = False
            self._reader = asyncio.create_task(self._read_loop(), name="event-bus-reader")

    async def stop(self) -> None:
        """Stop the reader and end every subscription."""
        task, self._reader = self._reader, None
        if task is not None:
            # redis-py can swallow a cancellation that lands at the wrong moment of
            # a blocking command (redis/redis-py#2028), so: a flag the loop checks,
            # and the cancel repeated until the task really ends.
            self._stopping = True
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.2)
            if not task.cancelled() and task.exception() is not None:
                logger.warning("event reader ended with %r", task.exception())
        self._end_all(None)

    async def publish(
        self, type: str, org_id: str, audience: Iterable[str], data: Mapping[str, Any]
    ) -> str:
        """XADD the event (trimmed by count and age); returns its stream id.

        Raises `EventBusUnavailable` when Redis cannot be reached or does not answer
        within `command_timeout`, TypeError when `data` is not JSON-serialisable.
        """
        raw = orjson.dumps(dict(data))
        members = orjson.dumps(list(_audience(audience)))
        try:
            # `_publish_batch`'s deadline bounds the wait.
            return await self._publishes.submit([type, org_id, members, raw])
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"could not publish {type} event: {exc!r}") from exc

    async def _publish_batch(self, events: list[list[str | bytes]]) -> list[str]:
        """XADD every event, in order, with one script call; their stream ids."""
        args: list[str | int | bytes] = [self._max_retained, self._retention_ms]
        for event in events:
            args.extend(event)
        async with asyncio.timeout(self._command_timeout):
            ids = await self._publish_script(keys=[self.key], args=args)
        return [_text(i) for i in ids]

    async def _prepare(self, sub: Subscription) -> _Replay | None:
        if self._reader is None:
            raise RuntimeError("RedisEventBus.start() was not called")
        # Until the reader knows where it starts, an event published now might be
        # neither replayed nor delivered live.
        try:
            await asyncio.wait_for(self._positioned.wait(), self._ready_timeout)
        except TimeoutError as exc:
            raise EventBusUnavailable("the event reader cannot reach Redis") from exc
        if sub.last_event_id is None:
            return None
        try:
            return await self._replay(sub, sub.last_event_id)
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"could not replay events: {exc!r}") from exc

    async def _state_and_page(
        self, cursor: str
    ) -> tuple[_StreamState | None, list[tuple[Any, Mapping[Any, Any]]]]:
        # In one MULTI, so the page and the deletion floor describe the same moment.
        async with (
            asyncio.timeout(self._command_timeout),
            self._redis.pipeline(transaction=True) as pipe,
        ):
            pipe.xinfo_stream(self.key)
            pipe.xrange(self.key, min=f"({cursor}", max="+", count=_REPLAY_PAGE)
            info, entries = await pipe.execute(raise_on_error=False)
        if isinstance(entries, BaseException):
            raise entries
        if isinstance(info, BaseException):
            if _is_missing_key(info):
                return None, []
            raise info
        return _stream_state(info), list(entries)

    async def _replay(self, sub: Subscription, last_event_id: str) -> _Replay:
        requested = _id_key(last_event_id)
        cursor = last_event_id if requested is not None else "0-0"
        items: list[Event | Resync] = []
        first_page = True
        while True:
            state, entries = await self._state_and_page(cursor)
            if state is None:
                # No stream at all: nothing was ever published, or Redis lost it.
                # Only the checkpoint handed out for that state ("0-0") is current.
                if requested == (0, 0):
                    return _Replay([], last_event_id)
                return _Replay([Resync(RESYNC_UNKNOWN_ID, "0-0")], "0-0")
            checkpoint = _format_id(state.last)
            if first_page and (requested is None or requested > state.last):
                return _Replay([Resync(RESYNC_UNKNOWN_ID, checkpoint)], checkpoint)
            first_page = False
            # Checked on every page: trimming may overtake a slow replay.
            cursor_key = _id_key(cursor) or (0, 0)
            if cursor_key < state.floor:
                return _Replay([Resync(RESYNC_EXPIRED, checkpoint)], checkpoint)
            for entry_id, fields in entries:
                event = self._decode(entry_id, fields, sub)
                if event is not None:
                    items.append(event)
                    if len(items) > self._max_queue:
                        resync = Resync(RESYNC_TOO_FAR_BEHIND, checkpoint)
                        return _Replay([resync], checkpoint)
            if len(entries) < _REPLAY_PAGE:
                break
            cursor = _text(entries[-1][0])
        watermark = items[-1].id if items and isinstance(items[-1], Event) else last_event_id
        return _Replay(items, watermark)

    def _decode(
        self, entry_id: Any, fields: Mapping[Any, Any], sub: Subscription | None
    ) -> Event | None:
        """The entry as an Event if `sub` (or, when None, any local subscriber) sees it."""
        try:
            org_id = _text(_field(fields, "o"))
            audience = tuple(str(u) for u in orjson.loads(_field(fields, "a")))
            if sub is not None:
                if org_id != sub.org_id or sub.user_id not in audience:
                    return None
            elif not self._has_local(audience):
                # Most entries concern nobody connected here: skip decoding the body.
                return None
            raw = _field(fields, "d")
            data = orjson.loads(raw)
            return Event(
                id=_text(entry_id),
                type=_text(_field(fields, "t")),
                org_id=org_id,
                audience=audience,
                data=data,
                _json=_text(raw),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            logger.warning("skipping malformed event stream entry %s", _text(entry_id))
            return None

    async def _read_state(self) -> _StreamState | None:
        try:
            info = await self._redis.xinfo_stream(self.key)
        except ResponseError as exc:
            if _is_missing_key(exc):
                return None
            raise
        return _stream_state(info)

    def _register(self, sub: Subscription) -> None:
        super()._register(sub)
        self._subscribed.set()

    async def _idle(self) -> None:
        """Wait while nobody here is subscribed, up to `_IDLE_READ_SECONDS`.

        Each webhook's events wake every process's reader; a process with no
        subscriber has nothing to deliver, so it reads the stream in bulk now and then
        instead. Its position still moves only by reading, so a subscriber that
        arrives meanwhile is handed every event after its arrival (the reader catches
        up at once), and possibly those of the second before it (events of messages
        it may not have loaded yet: never fewer than it asked for)."""
        self._subscribed.clear()
        if self._by_user:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_IDLE_READ_SECONDS):
                await self._subscribed.wait()

    async def _read_loop(self) -> None:
        delay = _BACKOFF_MIN
        recovering = False
        while not self._stopping:
            if self._last_id is not None and not recovering:
                await self._idle()
            try:
                # A bound on the whole round: a host that vanished without closing
                # the connection would otherwise leave the reader waiting forever.
                async with asyncio.timeout(self._block_ms / 1000 + self._command_timeout):
                    if self._last_id is None:
                        # Start at the end: subscribers get older events by replay.
                        state = await self._read_state()
                        self._last_id = _format_id(state.last) if state else "0-0"
                        self._positioned.set()
                    elif recovering:
                        await self._check_gap()
                    recovering = False
                    response = await self._redis.xread(
                        {self.key: self._last_id}, count=_READ_COUNT, block=self._block_ms
                    )
                delay = _BACKOFF_MIN
                self._deliver(response)
            except Exception as exc:
                # Never let the reader die: back off, then resume from _last_id, so
                # events published meanwhile (by processes that could reach Redis)
                # are still delivered once Redis answers again.
                if self._stopping:
                    return
                recovering = True
                logger.warning("event reader: %r; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    def _deliver(self, response: Any) -> None:
        if not self._by_user:
            # Nobody here to tell: only the position moves.
            for entry_id, _ in _stream_entries(response):
                self._last_id = _text(entry_id)
            return
        for entry_id, fields in _stream_entries(response):
            # Advance first: a malformed entry is skipped, not re-read forever.
            self._last_id = _text(entry_id)
            event = self._decode(entry_id, fields, None)
            if event is not None:
                self._dispatch(event)

    async def _check_gap(self) -> None:
        # After an outage, entries after our position may have been trimmed (or the
        # stream lost): local subscribers then missed events and must resync.
        assert self._last_id is not None
        position = _id_key(self._last_id) or (0, 0)
        state = await self._read_state()
        if state is None:
            lost = position != (0, 0)
            checkpoint = "0-0"
        else:
            lost = position < state.floor
            checkpoint = _format_id(state.last)
        if lost:
            logger.warning("event reader missed events while Redis was unreachable")
            self._end_all(Resync(RESYNC_EVENTS_LOST, checkpoint))
            self._last_id = checkpoint


def create_event_bus(
    redis: Redis | None,
    *,
    prefix: str,
    retention_seconds: float,
    max_retained: int,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> RedisEventBus | InProcessEventBus:
    """The Redis bus when a client is given, else the in-process bus (one process only)."""
    if redis is None:
        return InProcessEventBus(retention_seconds, max_retained, max_queue=max_queue)
    return RedisEventBus(redis, prefix, retention_seconds, max_retained, max_queue=max_queue)


def _frame(item: Event | Resync) -> dict[str, Any]:
    if isinstance(item, Event):
        return {"id": item.id, "event": item.type, "data": item.json()}
    data = orjson.dumps({"reason": item.reason, "checkpoint": item.checkpoint}).decode()
    frame: dict[str, Any] = {"event": "resync", "data": data}
    if item.checkpoint is not None:
        # The browser resends its last `id` on reconnect: moving it to the checkpoint
        # stops it from asking again for what it was just told to reload.
        frame["id"] = item.checkpoint
    return frame


async def sse_stream(
    subscription: Subscription, *, retry_ms: int | None = DEFAULT_RETRY_MS
) -> AsyncIterator[dict[str, Any]]:
    """Frame a subscription for sse-starlette's `EventSourceResponse` (heartbeats: its `ping`).

    Enters and closes the subscription itself, so a client going away frees it.
    """
    if retry_ms is not None:
        yield {"retry": retry_ms}
    try:
        async with subscription:
            async for item in subscription:
                yield _frame(item)
    except EventBusUnavailable as exc:
        # Ending the response makes the browser reconnect after `retry_ms` with its
        # Last-Event-ID, which is the recovery we want once Redis is back.
        logger.warning("event stream for user %s ended: %s", subscription.user_id, exc)
