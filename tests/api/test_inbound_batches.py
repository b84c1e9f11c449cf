"""Inbound stores that come together go to PostgreSQL as one batch.

Each caller must still get exactly its own answer: stored, duplicate (also within one
batch) or stale, and one store that fails must neither fail nor lose the others.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from app.carriers.base import InboundSms
from app.context import AppContext
from app.models import Conversation, Message
from app.services import inbound
from app.services.auto_responder import Decision
from app.services.inbound_store import StoreOutcome, store_inbound
from app.services.routing import SenderFacts
from tests.conftest import SendTelnyx
from tests.support import Tenant, new_number

pytestmark = pytest.mark.asyncio


class _BatchSizes:
    """Records the size of every batch the process's store coalescer sends."""

    def __init__(self, ctx: AppContext) -> None:
        self.sizes: list[int] = []
        coalescer = ctx.inbound_batches
        assert coalescer is not None
        self._coalescer = coalescer
        self._run = coalescer._run_batch

    async def _recording(self, batch: list[Any]) -> Any:
        self.sizes.append(len(batch))
        return await self._run(batch)

    def __enter__(self) -> _BatchSizes:
        self._coalescer._run_batch = self._recording
        return self

    def __exit__(self, *_: object) -> None:
        self._coalescer._run_batch = self._run


async def _messages_of(ctx: AppContext, carrier_ids: list[str]) -> dict[str, int]:
    async with ctx.sessionmaker() as s:
        rows = await s.execute(
            select(Message.carrier_message_id, func.count())
            .where(Message.carrier_message_id.in_(carrier_ids))
            .group_by(Message.carrier_message_id)
        )
        return {cid: n for cid, n in rows.all()}


async def test_concurrent_webhooks_are_stored_in_batches_each_answered_as_its_own(
    tenant: Tenant, ctx: AppContext, send_telnyx: SendTelnyx
) -> None:
    bob, line = await tenant.add_auto_replying_user("bob", "102")
    # Warm up the path (route cache, coalescer) with one webhook.
    assert (await send_telnyx(new_number(), line, "first")).json()["status"] == "stored"

    patients = [new_number() for _ in range(12)]
    repeated = str(uuid.uuid4())
    sends = [
        send_telnyx(p, line, f"hello {i}", message_id=f"b-{i}-{p}") for i, p in enumerate(patients)
    ]
    # The same carrier message three times and one patient texting twice at once.
    sends += [send_telnyx(patients[0], line, "again", message_id=repeated) for _ in range(3)]
    sends.append(send_telnyx(patients[1], line, "second text", message_id=f"b-x-{patients[1]}"))
    with _BatchSizes(ctx) as batches:
        results = await asyncio.gather(*sends)

    assert [r.status_code for r in results] == [200] * len(sends)
    statuses = [r.json()["status"] for r in results]
    assert statuses[:12] == ["stored"] * 12
    assert sorted(statuses[12:15]) == ["duplicate", "duplicate", "stored"]
    assert statuses[15] == "stored"
    assert max(batches.sizes) > 1, batches.sizes  # really batched

    ids = [f"b-{i}-{p}" for i, p in enumerate(patients)] + [repeated, f"b-x-{patients[1]}"]
    assert await _messages_of(ctx, ids) == {cid: 1 for cid in ids}
    for i, patient in enumerate(patients):
        conv = await tenant.sms_conversation(bob, patient)
        assert conv is not None
        msgs = await tenant.messages(bob, conv["id"])
        # One auto-reply per patient, whatever the batch held.
        assert [m["auto_reply"] for m in msgs].count(True) == 1, (i, msgs)
        inbound_bodies = sorted(m["body"] for m in msgs if m["direction"] == "inbound")
        expected = {0: ["again", "hello 0"], 1: ["hello 1", "second text"]}.get(i, [f"hello {i}"])
        assert inbound_bodies == expected


async def test_a_failing_store_fails_alone_and_the_rest_of_its_batch_is_stored(
    tenant: Tenant, ctx: AppContext
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    line = bob.outbound_sms_number
    assert line is not None
    route = await inbound._fresh_route(ctx, line)
    assert route is not None

    def rows(patient: str, carrier_id: str) -> Any:
        sms = InboundSms("telnyx", carrier_id, patient, line, "hi", 0)
        decision = Decision(False, "disabled")
        return inbound._rows(ctx, route, sms, patient, line, None, SenderFacts(), decision)

    good = [rows(new_number(), f"ok-{uuid.uuid4()}") for _ in range(5)]
    bad = rows(new_number(), f"bad-{uuid.uuid4()}")
    # A conversation owned by no user: the foreign key refuses it.
    bad.conversation.owner_user_id = uuid.uuid4()
    stale = rows(new_number(), f"stale-{uuid.uuid4()}")
    stale.route_version -= 1
    # Make sure the batch path is in place, then store all in one loop turn.
    await store_inbound(ctx, rows(new_number(), f"warm-{uuid.uuid4()}"))
    with _BatchSizes(ctx) as batches:
        results = await asyncio.gather(
            *(store_inbound(ctx, r) for r in [*good[:2], bad, stale, *good[2:]]),
            return_exceptions=True,
        )
    assert batches.sizes == [7]
    assert isinstance(results[2], DBAPIError), results[2]
    assert getattr(results[3], "outcome", None) is StoreOutcome.STALE
    stored = [r for i, r in enumerate(results) if i not in (2, 3)]
    assert [getattr(r, "outcome", r) for r in stored] == [StoreOutcome.STORED] * 5

    ids = [r.inbound.carrier_message_id for r in good]
    assert await _messages_of(ctx, ids) == {cid: 1 for cid in ids}
    assert await _messages_of(ctx, [bad.inbound.carrier_message_id]) == {}
    assert await _messages_of(ctx, [stale.inbound.carrier_message_id]) == {}
    async with ctx.sessionmaker() as s:
        assert await s.get(Conversation, bad.conversation.id) is None
