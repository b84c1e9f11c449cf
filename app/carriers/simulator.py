"""The embedded default carrier: accepts sends in-process and reports delivery like a carrier.

No network and no wire format: receipts are handed straight to a `status_sink`
(the same code path a verified carrier webhook ends in), a moment after the send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from app.carriers.base import (
    CarrierError,
    InboundSink,
    InboundSms,
    SendResult,
    StatusSink,
    StatusUpdate,
)

logger = logging.getLogger(__name__)

CARRIER_NAME = "simulator"


@dataclass(frozen=True, slots=True)
class SimulatedSend:
    """One message the simulator accepted."""

    carrier_message_id: str
    from_number: str
    to_number: str
    body: str
    reference: str
    accepted_at: float


class SimulatorCarrier:
    """An in-process carrier that accepts every send and reports it delivered shortly after."""

    name = CARRIER_NAME

    def __init__(
        self,
        *,
        status_sink: StatusSink | None = None,
        inbound_sink: InboundSink | None = None,
        delivery_delay: float = 0.05,
        max_records: int = 1000,
        sink_attempts: int = 5,
    ) -> None:
        """Sinks may also be assigned later (the app builds them after the carrier)."""
        self.status_sink = status_sink
        self.inbound_sink = inbound_sink
        self.delivery_delay = delivery_delay
        self._sink_attempts = max(1, sink_attempts)
        self._sent: deque[SimulatedSend] = deque(maxlen=max_records)
        self._failures: deque[bool] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def sent(self) -> list[SimulatedSend]:
        """The most recent accepted sends, oldest first (bounded by `max_records`)."""
        return list(self._sent)

    def fail_next(self, n: int = 1, *, retryable: bool = True) -> None:
        """Make the next `n` sends raise CarrierError (retryable like a 5xx, or not like a 4xx)."""
        self._failures.extend([retryable] * n)

    async def send(
        self, *, from_number: str, to_number: str, body: str, reference: str
    ) -> SendResult:
        """Accept the message and schedule its "delivered" receipt."""
        if self._closed:
            raise CarrierError(
                code="carrier_unreachable", message="The simulator is closed.", retryable=True
            )
        if self._failures:
            retryable = self._failures.popleft()
            if retryable:
                raise CarrierError(
                    code="carrier_unavailable",
                    message="Simulated carrier outage.",
                    retryable=True,
                    http_status=503,
                )
            raise CarrierError(
                code="simulated_rejection",
                message="Simulated carrier refusal.",
                retryable=False,
                http_status=400,
            )
        message_id = f"sim-{uuid.uuid4()}"
        self._sent.append(
            SimulatedSend(
                carrier_message_id=message_id,
                from_number=from_number,
                to_number=to_number,
                body=body,
                reference=reference,
                accepted_at=time.time(),
            )
        )
        # Scheduled even without a sink yet: the sink is looked up when the receipt is due.
        update = StatusUpdate(
            carrier=CARRIER_NAME,
            carrier_message_id=message_id,
            status="delivered",
            reference=reference,
        )
        self._spawn(self._report(update))
        return SendResult(carrier_message_id=message_id, status="sent")

    async def inject_inbound(
        self, *, from_number: str, to_number: str, text: str, media_count: int = 0
    ) -> InboundSms:
        """Deliver an inbound SMS to `inbound_sink` now (for local development and tests)."""
        sms = InboundSms(
            carrier=CARRIER_NAME,
            carrier_message_id=f"sim-{uuid.uuid4()}",
            from_number=from_number,
            to_number=to_number,
            text=text,
            media_count=media_count,
        )
        if self.inbound_sink is None:
            raise RuntimeError("SimulatorCarrier has no inbound_sink")
        await self.inbound_sink(sms)
        return sms

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, update: StatusUpdate) -> None:
        # Like a real carrier, retry a receipt the service could not take (database down).
        delay = self.delivery_delay
        for attempt in range(1, self._sink_attempts + 1):
            await asyncio.sleep(delay)
            sink = self.status_sink
            if sink is None:
                return
            try:
                await sink(update)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "simulator status receipt failed (attempt %d of %d)",
                    attempt,
                    self._sink_attempts,
                    exc_info=True,
                )
                delay = min(max(delay, 0.05) * 2, 5.0)

    async def aclose(self) -> None:
        """Cancel pending receipts."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
