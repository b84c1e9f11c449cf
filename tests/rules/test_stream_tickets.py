"""Ticket stores on their own: single use in process, and no ticket (never an open door)
when Redis cannot be asked."""

from __future__ import annotations

import pytest

from app.infra.limiters import create_limiter_client
from app.infra.stream_tickets import (
    InProcessTicketStore,
    RedisTicketStore,
    TicketStoreUnavailable,
)
from tests.servers import free_port


async def test_an_in_process_ticket_is_taken_once_and_not_after_it_expires() -> None:
    store = InProcessTicketStore()
    await store.put("ticket-hash", "token-hash", 60)
    assert await store.take("ticket-hash") == "token-hash"
    assert await store.take("ticket-hash") is None
    assert await store.take("never-issued") is None
    await store.put("expired", "token-hash", 0)
    assert await store.take("expired") is None


async def test_without_redis_no_ticket_is_issued_or_taken() -> None:
    client = create_limiter_client(f"redis://127.0.0.1:{free_port()}/0")
    store = RedisTicketStore(client, "test:tickets:")
    try:
        with pytest.raises(TicketStoreUnavailable):
            await store.put("ticket-hash", "token-hash", 60)
        with pytest.raises(TicketStoreUnavailable):
            await store.take("ticket-hash")
    finally:
        await client.aclose()
