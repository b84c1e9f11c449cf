"""The outbox worker: delivers queued outbound messages to the carrier, exactly once.

Each round claims a batch of due jobs in one statement (`FOR UPDATE SKIP LOCKED`, so
several workers never take the same one, and leased, so a job whose worker dies is
taken again later), gives each its number's next send slot (`CARRIER_SEND_RATE_PER_NUMBER`,
one Redis call for the batch), and sends each at its slot as its own task: a carrier
call that hangs holds one slot of `WORKER_CONCURRENCY`, never the worker (a job asleep
until its slot holds none). A job whose slot is more than a moment away waits here
`queued`, its lease lengthened past its slot, and is marked `sending` when the slot
comes, if its number is still its organization's; one whose slot is further than
`_HOLD_AHEAD_SECONDS` goes back to the outbox until it (keeping it: claimed again when it
comes, it goes at once). Either way it costs nothing while it waits, and a backlog is
claimed about once per message. The carrier is called outside any transaction;
accepted sends are recorded in batches (one statement for many). A worker that dies
mid-send leaves its job `in_flight`: after the lease and a grace period another worker
takes it, unless the carrier's delivery receipt (which names our message id) arrived
meanwhile and closed the job, so a message the carrier accepted is not sent twice.

A scheduled message's job is due at its `send_at`: until then the claim's index scan never
reaches it, so waiting messages cost nothing; when due, the claim checks its rules again
and makes it `queued` in the same statement (`delivery_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import DBAPIError

from app.bootstrap import build_context, close_context, wire_carrier
from app.carriers.base import CarrierError
from app.context import AppContext
from app.db import is_connection_error
from app.infra.coalesce import Coalescer
from app.infra.limiters import InProcessSendRateLimiter, LimiterUnavailable, RedisSendRateLimiter
from app.infra.web_load import WEB_LOAD, HostBoard, WebLoad
from app.metrics import CARRIER_SEND_LATENCY, DELIVERY_ATTEMPTS, Children
from app.models import utcnow
from app.observability import configure_logging
from app.services import delivery_status
from app.services.delivery_status import Accepted, ClaimedJob, Lease
from app.services.sealing import open_body
from app.settings import Settings

log = logging.getLogger(__name__)

DELIVERIES = Children(DELIVERY_ATTEMPTS)
SEND_LATENCY = Children(CARRIER_SEND_LATENCY)

# A job whose send slot is this close is marked `sending` when it is claimed and sent
# at its slot.
_MOMENT_SECONDS = 1.0
# One whose slot is further, but no further than this, waits here, asleep and `queued`
# (it costs nothing meanwhile), and is marked `sending` when its slot comes; one further
# still goes back to the outbox until its slot (claimed again then). A backlog on a
# number is thus claimed once per message, not twice: a paced backlog drains at the
# speed of an unpaced one. The lease covers the wait.
_HOLD_AHEAD_SECONDS = 30.0
# Stopping, a worker puts back what waits here within this time, or leaves it to the lease.
_PUT_BACK_SECONDS = 5.0
# At most this many jobs wait here at once (the rest go back to the outbox): the memory
# a backlog may take.
_MAX_WAITING = 10_000


def _waits_queued(wait: float) -> bool:
    """Whether a job with this long until its slot waits here `queued` (marked `sending`
    when the slot comes) rather than marked `sending` as it is claimed."""
    return wait > _MOMENT_SECONDS


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

    def __init__(self, ctx: AppContext, web_first: WebFirst | None = None) -> None:
        self.ctx = ctx
        # In a web process: the share it may take while the web tier is busy.
        self._web_first = web_first
        # Claimed jobs sleeping until their send slot, and those past it (or with none)
        # whose send has not ended: only these take a share of `WORKER_CONCURRENCY`.
        self._waiting = 0
        self._busy = 0
        # Set when a send ends: a share of the concurrency is free again.
        self._freed = asyncio.Event()
        # Those of them still `queued` (their slot over a moment away), with their slot:
        # put back in the outbox if the worker stops before it.
        self._asleep: dict[uuid.UUID, datetime] = {}
        self.settings = ctx.settings
        # Used while Redis is down, so messages keep flowing at the per-number rate.
        self._local_rate = InProcessSendRateLimiter()
        self._lease = timedelta(seconds=self.settings.carrier_timeout_seconds * 2 + 5)
        self._grace = timedelta(seconds=self.settings.delivery_in_doubt_grace_seconds)
        # Accepted sends of one loop turn (and those that come while a batch is being
        # written) are recorded together.
        self._accepted: Coalescer[Accepted, None] = Coalescer(
            self._record_accepted, max_batch=200, max_in_flight=1
        )
        # Jobs whose slot came after a wait here, marked `sending` together (and checked:
        # their number may have been released while they waited).
        self._slots_come: Coalescer[ClaimedJob, bool] = Coalescer(
            self._mark_woken, max_batch=200, max_in_flight=1
        )

    async def run_forever(self) -> None:
        """Deliver until cancelled."""
        in_flight: set[asyncio.Task[None]] = set()
        me = asyncio.current_task()
        try:
            while True:
                if me is not None and me.cancelling():
                    # Asked to stop, but a library swallowed the cancellation (Python
                    # 3.11's `asyncio.wait_for`, under redis-py's commands, returns a
                    # result that completed as the cancellation came): stop all the same,
                    # or the app's shutdown waits for this loop forever.
                    raise asyncio.CancelledError
                # Jobs waiting for their send slot hold no share of the concurrency: it
                # bounds carrier calls, not waiting. How many wait is bounded by the
                # pacing itself (a second of slots per number) and `_MAX_WAITING`.
                # (Jobs whose slot came may take it past the bound for a moment.)
                room = max(0, self.settings.worker_concurrency - self._busy)
                wanted = min(room, self.settings.worker_batch_size)
                if wanted > 0 and self._web_first is not None:
                    allowed = self._web_first.allowance(wanted)
                    if allowed == 0:
                        # The web tier is busy and this worker has had its share: the
                        # requests first, the next batch when the share allows.
                        await asyncio.sleep(self._web_first.seconds_until_allowed())
                        continue
                    wanted = allowed
                claimed: list[tuple[ClaimedJob, float]] = []
                got = 0
                # While the database is known silent, nothing is claimed: each attempt
                # would only wait out a timeout.
                if wanted > 0 and not self.ctx.db_guard.is_down:
                    try:
                        claimed, got = await self.claim(wanted)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("claiming delivery jobs failed; retrying", exc_info=True)
                        if not self.settings.is_sqlite and _is_unreachable(exc):
                            self.ctx.db_guard.mark_down(type(exc).__name__)
                for job, delay in sorted(claimed, key=lambda pair: pair[1]):
                    task = self._start(job, delay)
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if wanted > 0 and got == wanted:
                    continue  # a backlog: the next batch at once
                await self._until_more_work(full=wanted == 0)
        finally:
            # Sends cut short here stay in flight and are settled by the carrier's
            # receipt, or retried after their lease and grace period.
            for task in in_flight:
                task.cancel()
            await self._put_back_asleep()

    async def _until_more_work(self, *, full: bool) -> None:
        """Wait for new work (a commit wakes the worker, or the poll interval passes),
        or, when every share of the concurrency is taken, for a send to end. New work is
        then given a short window to gather, so that what arrives together is claimed
        together (one claim per batch, not per message) rather than one by one as it
        trickles in."""
        self.ctx.worker_wakeup.clear()
        self._freed.clear()
        woken: asyncio.Task[None] = asyncio.create_task(self._woken())
        freed: asyncio.Task[None] | None = (
            asyncio.create_task(self._a_send_ended()) if full else None
        )
        try:
            await asyncio.wait(
                {woken} if freed is None else {woken, freed},
                timeout=self.settings.worker_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            woken.cancel()
            if freed is not None:
                freed.cancel()
        if not full:
            await asyncio.sleep(self.settings.worker_batch_window_seconds)

    async def _woken(self) -> None:
        await self.ctx.worker_wakeup.wait()

    async def _a_send_ended(self) -> None:
        await self._freed.wait()

    async def claim(self, limit: int) -> tuple[list[tuple[ClaimedJob, float]], int]:
        """Lease due jobs and give each its send slot; those whose slot is further than
        `_HOLD_AHEAD_SECONDS` (or that find `_MAX_WAITING` jobs waiting here) go back to
        the outbox until their slot. Returns the jobs to send here, each with the seconds
        until its slot, and how many were claimed."""
        jobs = await delivery_status.claim_jobs(self.ctx, limit, self._lease, self._grace)
        if not jobs:
            return [], 0
        slots = await self._slots(jobs)
        now = utcnow()
        ready: list[tuple[ClaimedJob, float]] = []
        later: list[tuple[ClaimedJob, float]] = []
        kept: list[tuple[ClaimedJob, float]] = []
        room = _MAX_WAITING - self._waiting
        for job, wait in zip(jobs, slots, strict=True):
            if not _waits_queued(wait):
                ready.append((job, wait))
            elif wait <= _HOLD_AHEAD_SECONDS and room > 0:
                ready.append((job, wait))
                kept.append((job, wait))
                room -= 1
            else:
                later.append((job, wait))
        await delivery_status.hold_jobs(
            self.ctx,
            [(job.job_id, now + timedelta(seconds=wait)) for job, wait in later],
            [job.message_id for job, wait in ready if job.sendable and not _waits_queued(wait)],
            [job.message_id for job in jobs if job.came_due],
            [self._lease_from(job, now + timedelta(seconds=wait)) for job, wait in kept],
        )
        return ready, len(jobs)

    def _lease_from(self, job: ClaimedJob, slot: datetime) -> Lease:
        """The lease of a job that waits here until `slot`: as long as a claim's, from
        then."""
        until = slot + self._lease
        return Lease(job.job_id, until, until + self._grace)

    async def _slots(self, jobs: list[ClaimedJob]) -> list[float]:
        """Seconds until each job's send slot: its own when it waited for one, else the
        next of its number's schedule (one Redis call for all the batch's numbers)."""
        wanted: dict[str, int] = defaultdict(int)
        for job in jobs:
            if job.paced_at is None:
                wanted[job.from_number] += 1
        rate = self.settings.carrier_send_rate_per_number
        given: dict[str, list[float]] = {}
        if wanted:
            pairs = list(wanted.items())
            try:
                if isinstance(self.ctx.send_rate, RedisSendRateLimiter):
                    answers = await self.ctx.send_rate.reserve_many(pairs, rate)
                else:
                    answers = [await self.ctx.send_rate.reserve(n, rate, c) for n, c in pairs]
            except LimiterUnavailable:
                answers = [await self._local_rate.reserve(n, rate, c) for n, c in pairs]
            given = {
                number: list(reversed(slots))
                for (number, _), slots in zip(pairs, answers, strict=True)
            }
        now = utcnow()
        waits = []
        for job in jobs:
            if job.paced_at is not None:
                waits.append(max(0.0, (job.paced_at - now).total_seconds()))
            else:
                waits.append(given[job.from_number].pop())
        return waits

    def _start(self, job: ClaimedJob, wait: float) -> asyncio.Task[None]:
        """Deliver a claimed job in its own task, counted as waiting (until its slot) or
        busy (from then until its send ends) from now, not only once the task runs."""
        asleep = wait > 0 and job.sendable
        if asleep:
            self._waiting += 1
            if _waits_queued(wait):
                self._asleep[job.job_id] = utcnow() + timedelta(seconds=wait)
        else:
            self._busy += 1
        return asyncio.create_task(self.deliver(job, wait if asleep else 0.0))

    async def deliver(self, job: ClaimedJob, wait: float = 0.0) -> None:
        """Send one claimed job at its slot and record the outcome; never raises. (Told
        by `_start` whether it waits first.)"""
        busy = wait <= 0
        try:
            if not busy:
                try:
                    await asyncio.sleep(wait)
                finally:
                    self._waiting -= 1
                    self._asleep.pop(job.job_id, None)
                busy = True
                self._busy += 1
            await self._deliver(job, wait)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("delivery of a job failed; it will be retried", exc_info=True)
        finally:
            if busy:
                self._busy -= 1
                self._freed.set()

    async def _deliver(self, job: ClaimedJob, wait: float) -> None:
        if job.settled:
            # Already settled by a delivery receipt: never send it again.
            await delivery_status.record_settled(self.ctx, job)
            return
        if not job.owned:
            # Released (and perhaps another organization's now) since the message was
            # queued: sending it would speak for someone else.
            await self._record_failure(job, _released(job))
            return
        if job.opted_out:
            # Scheduled, and its recipient texted STOP while it waited.
            await self._record_failure(
                job,
                CarrierError(
                    "recipient_opted_out",
                    f"{job.to_number} has opted out of texts from this organization (STOP).",
                    retryable=False,
                ),
            )
            return
        if _waits_queued(wait) and not await self._slots_come.submit(job):
            # Its number was released while it waited here.
            await self._record_failure(job, _released(job))
            return
        body = open_body(self.ctx.keyring, job.message_id, job.org_id, job.body_ciphertext)
        carrier = self.ctx.carrier.name
        started = time.perf_counter()
        try:
            result = await self.ctx.carrier.send(
                from_number=job.from_number,
                to_number=job.to_number,
                body=body,
                reference=str(job.message_id),
            )
        except CarrierError as exc:
            SEND_LATENCY(carrier, "error").observe(time.perf_counter() - started)
            await self._record_failure(job, exc)
            return
        except Exception as exc:  # a bug or an unexpected transport error: retry later
            log.warning("carrier send raised", exc_info=True)
            await self._record_failure(job, CarrierError("carrier_error", str(exc), True))
            return
        SEND_LATENCY(carrier, "accepted").observe(time.perf_counter() - started)
        DELIVERIES("accepted").inc()
        await self._accepted.submit(
            Accepted(job, carrier, result.carrier_message_id, body)
        )

    async def _put_back_asleep(self) -> None:
        """Stopping: the jobs asleep here until their slot go back to the outbox, holding
        it, so that another worker sends them on time rather than after their lease."""
        asleep, self._asleep = list(self._asleep.items()), {}
        if not asleep:
            return
        try:
            async with asyncio.timeout(_PUT_BACK_SECONDS):
                await delivery_status.hold_jobs(self.ctx, asleep, [], [])
        except Exception:
            log.warning(
                "could not put back %d waiting jobs; they are sent after their lease",
                len(asleep),
                exc_info=True,
            )

    async def _mark_woken(self, batch: list[ClaimedJob]) -> list[bool]:
        released = await delivery_status.mark_woken(self.ctx, batch)
        return [job.job_id not in released for job in batch]

    async def _record_accepted(self, batch: list[Accepted]) -> list[None]:
        await delivery_status.record_sent(self.ctx, batch)
        return [None] * len(batch)

    async def _record_failure(self, job: ClaimedJob, exc: CarrierError) -> None:
        final = not exc.retryable or job.attempts >= self.settings.delivery_max_attempts
        DELIVERIES("failed" if final else "retry").inc()
        if final:
            await delivery_status.record_failed(self.ctx, job, exc.code, exc.message)
        else:
            delay = backoff_seconds(self.settings, job.attempts, exc.retry_after)
            if exc.extra.get("maybe_accepted") == "true":
                # The carrier may have taken it (a timeout after sending): give its
                # receipt, which names our message, time to settle the job first.
                delay = max(delay, self.settings.delivery_in_doubt_grace_seconds)
            await delivery_status.record_retry(self.ctx, job, delay, str(exc))
        # Logged once recorded.
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


def _released(job: ClaimedJob) -> CarrierError:
    return CarrierError(
        "from_number_released",
        f"{job.from_number} is no longer a number of this organization.",
        retryable=False,
    )


def _is_unreachable(exc: Exception) -> bool:
    if isinstance(exc, DBAPIError):
        return is_connection_error(exc)
    return isinstance(exc, (OSError, TimeoutError))


class WebFirst:
    """The share of a web process's event loop its delivery worker may take.

    While the web tier (this process's, or another of the server's on the same machine:
    `HostBoard`) was busy (handling a request) for at least `BUSY_SHARE` of the time
    since the last look, the server's workers claim at most `rate` messages a second
    together, in batches: each process its part of it (the rate over the server's live
    processes on the board), from a token bucket holding half a second of that part.
    Otherwise as many as they can. What waits meanwhile is sent when the load eases: a
    burst of webhooks is answered at the speed of the web tier alone, and its
    auto-replies follow it by seconds.
    """

    BUSY_SHARE = 0.5
    LOOK_EVERY_SECONDS = 0.25

    def __init__(
        self, load: WebLoad, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._load = load
        self._server_rate = rate
        self._clock = clock
        now = clock()
        self._filled_at = self._seen_at = now
        self._seen_busy = load.busy_seconds()
        self._seen_others = load.others_busy_seconds()
        self._share_rate(1 + len(self._seen_others))
        self._tokens = self._capacity
        self._need = 1
        self.busy = False

    def _share_rate(self, processes: int) -> None:
        """This process's part of the server's rate, and the bucket that holds half a
        second of it."""
        self._rate = self._server_rate / processes
        self._capacity = max(1.0, self._rate / 2)

    def _look(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now
        span = now - self._seen_at
        if span >= self.LOOK_EVERY_SECONDS:
            busy = self._load.busy_seconds()
            others = self._load.others_busy_seconds()
            # This process's web tier, or any other of the server's (they share cores).
            share = max(
                (
                    (seconds - self._seen_others.get(pid, seconds)) / span
                    for pid, seconds in others.items()
                ),
                default=0.0,
            )
            self.busy = max((busy - self._seen_busy) / span, share) >= self.BUSY_SHARE
            self._seen_at, self._seen_busy, self._seen_others = now, busy, others
            self._share_rate(1 + len(others))
            self._tokens = min(self._tokens, self._capacity)

    def allowance(self, wanted: int) -> int:
        """How many of `wanted` jobs may be claimed now (taken from the share). While busy,
        a whole batch at once (up to what the bucket holds): claims of a job or two at a
        time would each cost a round trip for little."""
        self._look()
        if not self.busy:
            return wanted
        self._need = min(wanted, int(self._capacity))
        if self._tokens < self._need:
            return 0
        self._tokens -= self._need
        return self._need

    def seconds_until_allowed(self) -> float:
        """How long until the batch last asked for may be claimed at the busy rate."""
        return max(0.0, (self._need - self._tokens) / self._rate)


def start_worker(ctx: AppContext) -> None:
    """Run a delivery worker inside this web process, stopped with the app, taking a
    bounded share of the event loop while the web tier is busy (`WebFirst`)."""
    rate = ctx.settings.worker_rate_while_busy
    web_first = None
    if rate > 0:
        try:
            WEB_LOAD.share(HostBoard.for_this_server())
        except OSError:
            # No writable temporary directory: each process looks at its own web tier.
            log.warning("no board for the server's web load; this process sees its own")
        web_first = WebFirst(WEB_LOAD, rate)
    task = asyncio.create_task(
        DeliveryWorker(ctx, web_first).run_forever(), name="delivery-worker"
    )
    ctx.background.append(task)
    ctx.essential["delivery worker"] = task


async def run_worker_forever(settings: Settings) -> None:
    """`python -m app worker`: a delivery worker process with no HTTP server, logging as
    the web processes do."""
    configure_logging(settings.log_level, settings.log_json)
    ctx = await build_context(settings)
    wire_carrier(ctx)
    work = asyncio.create_task(DeliveryWorker(ctx).run_forever(), name="delivery-worker")
    loop = asyncio.get_running_loop()
    # Stopped (a deploy, `docker stop`): the worker ends its own way, putting back what
    # waits for its slot, before the connections close.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, work.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await work
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await close_context(ctx)
