"""The outbox worker: delivers queued outbound messages to the carrier, exactly once.

A job is claimed in its own committed transaction (`FOR UPDATE SKIP LOCKED`, so
several workers never take the same one) and leased; the carrier is called outside
any transaction; the outcome is committed after. A worker that dies mid-send leaves
its job `in_flight`: after the lease and a grace period another worker takes it,
unless the carrier's delivery receipt (which names our message id) arrived meanwhile
and closed the job, so a message the carrier accepted is not sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import Counter
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError

from app.bootstrap import build_context, close_context, wire_carrier
from app.carriers.base import CarrierError, SendResult
from app.context import AppContext
from app.db import is_connection_error
from app.infra.limiters import InProcessSendRateLimiter, LimiterUnavailable
from app.models import DeliveryJob, Message, utcnow
from app.services import delivery_status
from app.services.outbound_numbers import owned_number
from app.services.publishing import publish
from app.services.sealing import open_body
from app.settings import Settings

log = logging.getLogger(__name__)

DELIVERIES = Counter(
    "outbound_delivery_attempts_total", "Carrier send attempts by outcome", ["outcome"]
)


@dataclass(frozen=True)
class ClaimedJob:
    job_id: uuid.UUID
    message_id: uuid.UUID
    org_id: uuid.UUID
    from_number: str
    attempts: int


def backoff_seconds(settings: Settings, attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, at least what the carrier asked for."""
    ceiling = min(
        settings.delivery_backoff_max_seconds,
        settings.delivery_backoff_base_seconds * (2 ** max(0, attempts - 1)),
    )
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class DeliveryWorker:
    """Claims due jobs, paces them per `from` number, sends them, records the outcome."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        # Used while Redis is down, so messages keep flowing at the per-number rate.
        self._local_rate = InProcessSendRateLimiter()
        self._lease = timedelta(seconds=self.settings.carrier_timeout_seconds * 2 + 5)
        self._grace = timedelta(seconds=self.settings.delivery_in_doubt_grace_seconds)

    async def run_forever(self) -> None:
        """Deliver until cancelled. Each send is its own task, so a carrier call that
        hangs holds one slot of `worker_concurrency`, never the whole worker."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                room = self.settings.worker_concurrency - len(in_flight)
                claimed: list[ClaimedJob] = []
                # While the database is known silent, nothing is claimed: each attempt
                # would only wait out a timeout.
                if room > 0 and not self.ctx.db_guard.is_down:
                    try:
                        claimed = await self.claim(min(room, self.settings.worker_batch_size))
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("claiming delivery jobs failed; retrying", exc_info=True)
                        if not self.settings.is_sqlite and _is_unreachable(exc):
                            self.ctx.db_guard.mark_down(type(exc).__name__)
                for job in claimed:
                    task = asyncio.create_task(self.deliver(job))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if claimed and len(in_flight) < self.settings.worker_concurrency:
                    continue
                self.ctx.worker_wakeup.clear()
                woken = asyncio.create_task(self.ctx.worker_wakeup.wait())
                try:
                    await asyncio.wait(
                        {woken, *in_flight},
                        timeout=self.settings.worker_poll_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    woken.cancel()
        finally:
            # Sends cut short here stay in flight and are settled by the carrier's
            # receipt, or retried after their lease and grace period.
            for task in in_flight:
                task.cancel()

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Lease due jobs: pending ones, and in-flight ones whose worker vanished."""
        now = utcnow()
        async with self.ctx.sessionmaker() as session:
            rows = (
                await session.scalars(
                    select(DeliveryJob)
                    .where(
                        DeliveryJob.state.in_(("pending", "in_flight")),
                        DeliveryJob.next_attempt_at <= now,
                    )
                    .order_by(DeliveryJob.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            claimed = []
            for job in rows:
                job.state = "in_flight"
                job.attempts += 1
                job.lease_expires_at = now + self._lease
                # If this worker dies, the job becomes due again after lease + grace.
                job.next_attempt_at = now + self._lease + self._grace
                claimed.append(
                    ClaimedJob(job.id, job.message_id, job.org_id, job.from_number, job.attempts)
                )
            if claimed:
                await delivery_status.mark_sending(session, [c.message_id for c in claimed], now)
            await session.commit()
        return claimed

    async def _wait_for_rate(self, from_number: str) -> float:
        rate = self.settings.carrier_send_rate_per_number
        try:
            return await self.ctx.send_rate.acquire(from_number, rate)
        except LimiterUnavailable:
            return await self._local_rate.acquire(from_number, rate)

    async def deliver(self, job: ClaimedJob) -> None:
        """Send one claimed job (or put it back if its number must wait); never raises."""
        try:
            await self._deliver(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("delivery of a job failed; it will be retried", exc_info=True)

    async def _deliver(self, job: ClaimedJob) -> None:
        wait = await self._wait_for_rate(job.from_number)
        if wait > 0:
            await self._put_back(job, wait)
            return
        async with self.ctx.sessionmaker() as session:
            message = await session.get(Message, job.message_id)
            if (
                message is None
                or message.status in delivery_status.TERMINAL
                or (message.carrier_message_id is not None)
            ):
                # Already settled by a delivery receipt: never send it again.
                await session.execute(
                    update(DeliveryJob)
                    .where(DeliveryJob.id == job.job_id)
                    .values(state="done", lease_expires_at=None)
                )
                await session.commit()
                return
            body = open_body(self.ctx.keyring, message.id, message.org_id, message.body_ciphertext)
            to_number = message.to_number or ""
            owned = await session.scalar(select(owned_number(job.org_id, job.from_number)))
        if not owned:
            # Released (and perhaps another organization's now) since the message was
            # queued: sending it would speak for someone else.
            await self._record_failure(
                job,
                CarrierError(
                    "from_number_released",
                    f"{job.from_number} is no longer a number of this organization.",
                    retryable=False,
                ),
            )
            return
        try:
            result = await self.ctx.carrier.send(
                from_number=job.from_number,
                to_number=to_number,
                body=body,
                reference=str(job.message_id),
            )
        except CarrierError as exc:
            await self._record_failure(job, exc)
            return
        except Exception as exc:  # a bug or an unexpected transport error: retry later
            log.warning("carrier send raised", exc_info=True)
            await self._record_failure(job, CarrierError("carrier_error", str(exc), True))
            return
        await self._record_success(job, result)

    async def _put_back(self, job: ClaimedJob, wait: float) -> None:
        async with self.ctx.sessionmaker() as session:
            await session.execute(
                update(DeliveryJob)
                .where(DeliveryJob.id == job.job_id)
                .values(
                    state="pending",
                    attempts=DeliveryJob.attempts - 1,
                    lease_expires_at=None,
                    next_attempt_at=utcnow() + timedelta(seconds=wait),
                )
            )
            await session.commit()

    async def _record_success(self, job: ClaimedJob, result: SendResult) -> None:
        DELIVERIES.labels("accepted").inc()
        async with self.ctx.sessionmaker() as session:
            # Job first, then message: the lock order of every path.
            await session.execute(
                _JOB_DONE, {"job_id": job.job_id}, execution_options=delivery_status.NO_SYNC
            )
            await delivery_status.advance_outbound(
                session,
                job.message_id,
                "sent",
                carrier=self.ctx.carrier.name,
                carrier_message_id=result.carrier_message_id,
            )
            await session.commit()
            message = await session.get(Message, job.message_id)
            if message is not None:
                await publish(self.ctx, session, "message.updated", [message])

    async def _record_failure(self, job: ClaimedJob, exc: CarrierError) -> None:
        final = not exc.retryable or job.attempts >= self.settings.delivery_max_attempts
        DELIVERIES.labels("failed" if final else "retry").inc()
        log.info(
            "carrier send failed",
            extra={
                "fields": {
                    "message_id": str(job.message_id),
                    "code": exc.code,
                    "attempt": job.attempts,
                    "final": final,
                }
            },
        )
        async with self.ctx.sessionmaker() as session:
            if final:
                await session.execute(
                    update(DeliveryJob)
                    .where(DeliveryJob.id == job.job_id)
                    .values(state="failed", lease_expires_at=None, last_error=str(exc))
                )
                changed = await delivery_status.advance_outbound(
                    session,
                    job.message_id,
                    "failed",
                    error_code=exc.code,
                    error_message=exc.message,
                )
            else:
                delay = backoff_seconds(self.settings, job.attempts, exc.retry_after)
                if exc.extra.get("maybe_accepted") == "true":
                    # The carrier may have taken it (a timeout after sending): give its
                    # receipt, which names our message, time to settle the job first.
                    delay = max(delay, self.settings.delivery_in_doubt_grace_seconds)
                await session.execute(
                    update(DeliveryJob)
                    .where(DeliveryJob.id == job.job_id)
                    .values(
                        state="pending",
                        lease_expires_at=None,
                        last_error=str(exc),
                        next_attempt_at=utcnow() + timedelta(seconds=delay),
                    )
                )
                await delivery_status.requeue(session, job.message_id, utcnow())
                changed = False
            await session.commit()
            if changed:
                message = await session.get(Message, job.message_id)
                if message is not None:
                    await publish(self.ctx, session, "message.updated", [message])


_JOB_DONE = (
    update(DeliveryJob)
    .where(DeliveryJob.id == bindparam("job_id"))
    .values(state="done", lease_expires_at=None, last_error=None)
)


def _is_unreachable(exc: Exception) -> bool:
    if isinstance(exc, DBAPIError):
        return is_connection_error(exc)
    return isinstance(exc, (OSError, TimeoutError))


def start_worker(ctx: AppContext) -> None:
    """Run a delivery worker inside this process, stopped with the app."""
    task = asyncio.create_task(DeliveryWorker(ctx).run_forever(), name="delivery-worker")
    ctx.background.append(task)
    ctx.essential["delivery worker"] = task


async def run_worker_forever(settings: Settings) -> None:
    """`python -m app worker`: a delivery worker process with no HTTP server."""
    ctx = await build_context(settings)
    wire_carrier(ctx)
    try:
        await DeliveryWorker(ctx).run_forever()
    finally:
        await close_context(ctx)
