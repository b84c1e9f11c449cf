"""Builds one process's `AppContext` and wires its parts together: the engine, Redis,
the keyring, limiters, the event bus, the carrier, the carriers' webhook readers and
the caches, all made when it is built; and closes it."""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.carriers.base import (
    Carrier,
    InboundSms,
    StatusUpdate,
    UnconfiguredWebhooks,
    WebhookReader,
)
from app.carriers.simulator import SimulatorCarrier
from app.carriers.telnyx import TelnyxCarrier, TelnyxWebhooks
from app.carriers.twilio import TwilioCarrier, TwilioWebhooks
from app.context import AppContext
from app.crypto import Keyring
from app.db import create_engine, create_sessionmaker
from app.infra import limiters
from app.infra.caches import LruCache
from app.infra.coalesce import Coalescer
from app.infra.db_guard import DatabaseGuard
from app.infra.event_bus import EventBus, InProcessEventBus, RedisEventBus
from app.infra.limiters import AutoReplyWindow, SendRateLimiter
from app.infra.redis_packing import pack_with_hiredis
from app.infra.stream_slots import InProcessStreamSlots, RedisStreamSlots
from app.infra.stream_tickets import InProcessTicketStore, RedisTicketStore, TicketStore
from app.migrate import upgrade_to_head
from app.services import delivery_status, inbound, send_store
from app.services.inbound_store import store_batch
from app.services.routing import RouteCache, SenderFactsCache
from app.services.streams import StreamGuard
from app.settings import Settings


def build_carrier(settings: Settings) -> Carrier:
    """The outbound carrier named by the CARRIER setting."""
    if settings.carrier == "telnyx":
        if not settings.telnyx_api_key:
            raise RuntimeError("CARRIER=telnyx needs TELNYX_API_KEY")
        return TelnyxCarrier(
            api_key=settings.telnyx_api_key,
            api_base=settings.telnyx_api_base,
            public_base_url=settings.public_base_url,
            timeout=settings.carrier_timeout_seconds,
        )
    if settings.carrier == "twilio":
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise RuntimeError("CARRIER=twilio needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        return TwilioCarrier(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            api_base=settings.twilio_api_base,
            public_base_url=settings.public_base_url,
            timeout=settings.carrier_timeout_seconds,
        )
    return SimulatorCarrier()


def build_webhook_readers(settings: Settings) -> dict[str, WebhookReader]:
    """A reader for each carrier's webhooks, whichever carrier we send through: we may
    receive through one and send through another. One without its secret refuses."""
    telnyx: WebhookReader = UnconfiguredWebhooks(
        "telnyx", "Telnyx webhooks are not configured (TELNYX_PUBLIC_KEY)."
    )
    twilio: WebhookReader = UnconfiguredWebhooks(
        "twilio", "Twilio webhooks are not configured (TWILIO_AUTH_TOKEN)."
    )
    if settings.telnyx_public_key:
        telnyx = TelnyxWebhooks(
            public_key=settings.telnyx_public_key,
            tolerance_seconds=settings.webhook_tolerance_seconds,
        )
    if settings.twilio_auth_token:
        twilio = TwilioWebhooks(auth_token=settings.twilio_auth_token)
    return {reader.carrier: reader for reader in (telnyx, twilio)}


def build_keyring(settings: Settings) -> Keyring:
    """ENCRYPTION_KEYS, or on the embedded default a key file made on first run."""
    if settings.encryption_keys:
        return Keyring.from_setting(settings.encryption_keys)
    if not settings.is_sqlite:
        raise RuntimeError(
            "ENCRYPTION_KEYS must be set when DATABASE_URL is not the embedded default"
        )
    return Keyring.load_or_create(settings.data_dir / "encryption.key")


async def build_context(settings: Settings) -> AppContext:
    """Engine, Redis, keyring, limiters, event bus and carrier for one process."""
    # The engine first: on SQLite it makes the database file private before anything
    # (the migration included) opens it.
    engine = create_engine(settings)
    if settings.should_auto_migrate:
        await upgrade_to_head(settings.effective_database_url)
    redis_client = None
    window: AutoReplyWindow
    rate: SendRateLimiter
    bus: EventBus
    slots: InProcessStreamSlots | RedisStreamSlots
    tickets: TicketStore
    if settings.redis_url:
        redis_client = limiters.create_limiter_client(settings.redis_url)
        window = limiters.RedisAutoReplyWindow(redis_client, settings.redis_key_prefix)
        rate = limiters.RedisSendRateLimiter(redis_client, settings.redis_key_prefix)
        slots = RedisStreamSlots(redis_client, settings.redis_key_prefix)
        tickets = RedisTicketStore(redis_client, settings.redis_key_prefix)
        # Blocking stream reads need a connection without the limiter's short timeouts.
        # A pooled connection left stale by a Redis restart is retried on a fresh one.
        bus_client: Redis = pack_with_hiredis(
            Redis.from_url(
                settings.redis_url,
                socket_timeout=30,
                socket_connect_timeout=5,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
            )
        )
        bus = RedisEventBus(
            bus_client,
            settings.redis_key_prefix,
            retention_seconds=settings.events_retention_seconds,
            max_retained=settings.events_max_retained,
        )
    else:
        window = limiters.InProcessAutoReplyWindow()
        rate = limiters.InProcessSendRateLimiter()
        slots = InProcessStreamSlots()
        tickets = InProcessTicketStore()
        bus = InProcessEventBus(
            retention_seconds=settings.events_retention_seconds,
            max_retained=settings.events_max_retained,
        )
    sessionmaker = create_sessionmaker(engine)
    routes = RouteCache()
    ctx = AppContext(
        settings=settings,
        engine=engine,
        sessionmaker=sessionmaker,
        keyring=build_keyring(settings),
        auto_reply_window=window,
        send_rate=rate,
        api_limits=limiters.create_api_limiter(
            redis_client,
            settings.redis_key_prefix,
            requests_per_minute=settings.api_rate_limit_per_minute,
            auth_failures_per_minute=settings.auth_failure_limit_per_minute,
        ),
        events=bus,
        carrier=build_carrier(settings),
        webhook_readers=build_webhook_readers(settings),
        streams=StreamGuard(
            sessionmaker, slots, tickets, recheck_seconds=settings.events_auth_recheck_seconds
        ),
        routes=routes,
        sender_facts=SenderFactsCache(),
        db_guard=DatabaseGuard(engine, timeout=settings.database_timeout_seconds),
        senders=LruCache(20_000),
        search_rarity=LruCache(10_000),
        send_batches=Coalescer(
            lambda batch: send_store.store_batch(engine, batch), max_batch=64, max_in_flight=1
        ),
        receipt_batches=Coalescer(
            lambda batch: delivery_status.apply_receipts(engine, batch),
            max_batch=64,
            max_in_flight=1,
        ),
        inbound_batches=Coalescer(
            lambda batch: store_batch(engine, batch), max_batch=64, max_in_flight=1
        ),
        redis=redis_client,
    )
    await bus.start()
    return ctx


async def close_context(ctx: AppContext) -> None:
    """Stop background work and release connections."""
    for task in ctx.background:
        task.cancel()
    for task in ctx.background:
        # Cancelled, or already failed: either way we are stopping.
        with contextlib.suppress(BaseException):
            await task
    await ctx.db_guard.close()
    await ctx.events.stop()
    await ctx.carrier.aclose()
    if ctx.redis is not None:
        await ctx.redis.aclose()
    await ctx.engine.dispose()


def wire_carrier(ctx: AppContext) -> None:
    """Hand the in-process simulator's receipts and inbound texts to the messaging rules."""
    if not isinstance(ctx.carrier, SimulatorCarrier):
        return

    async def on_status(update: StatusUpdate) -> None:
        await delivery_status.receive_status(ctx, update)

    async def on_inbound(sms: InboundSms) -> None:
        await inbound.receive_inbound(ctx, sms)

    ctx.carrier.status_sink = on_status
    ctx.carrier.inbound_sink = on_inbound
