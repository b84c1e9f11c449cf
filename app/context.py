"""The long-lived objects one process shares: a plain holder, built and wired by
`app.bootstrap`, read by dependencies, services and the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.carriers.base import Carrier, WebhookReader
    from app.crypto import Keyring
    from app.infra.caches import LruCache
    from app.infra.coalesce import Coalescer
    from app.infra.db_guard import DatabaseGuard
    from app.infra.event_bus import EventBus
    from app.infra.limiters import ApiRateLimiter, AutoReplyWindow, SendRateLimiter
    from app.services.auth import CachedSender
    from app.services.routing import RouteCache, SenderFactsCache
    from app.services.streams import StreamGuard


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    keyring: Keyring
    auto_reply_window: AutoReplyWindow
    send_rate: SendRateLimiter
    # Requests per token and failed authentications per address (the rate-limit
    # middleware), and the messages a send creates (the send service).
    api_limits: ApiRateLimiter
    events: EventBus
    # The carrier we send through (CARRIER).
    carrier: Carrier
    # Every carrier's webhooks, read whichever carrier we send through, by carrier name
    # ("telnyx", "twilio"); one whose secret is not set refuses them all.
    webhook_readers: Mapping[str, WebhookReader]
    streams: StreamGuard
    # Inbound routing, read once per number and checked on every use (services.routing).
    routes: RouteCache
    sender_facts: SenderFactsCache
    # Inbound stores, sent to PostgreSQL in batches, one batch in flight at a time
    # (services.inbound_store).
    inbound_batches: Coalescer[list[Any], Any]
    # Senders of sends by their token's hash, checked on every use (services.send_store),
    # and the sends stored on PostgreSQL in batches.
    senders: LruCache[str, CachedSender]
    send_batches: Coalescer[list[Any], Any]
    # Carriers' receipts, applied on PostgreSQL in batches (services.delivery_status).
    receipt_batches: Coalescer[list[Any], Any]
    # Whether the database answers; fail fast while it does not (app.availability).
    db_guard: DatabaseGuard
    # How many contacts hold a piece of a name search, by the piece's terms, and until
    # when the count is kept (services.inbox): it only picks the search's plan.
    search_rarity: LruCache[tuple[int, ...], tuple[float, int]]
    redis: Redis | None = None
    background: list[asyncio.Task[object]] = field(default_factory=list)
    # Background tasks that must run for as long as the process serves (the liveness
    # check reports one that ended).
    essential: dict[str, asyncio.Task[object]] = field(default_factory=dict)
    # Set when new outbound work is committed, so the in-process worker need not poll.
    worker_wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_worker(self) -> None:
        self.worker_wakeup.set()
