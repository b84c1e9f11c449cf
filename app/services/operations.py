"""What operators watch that no counter holds: the outbox's backlog, read when scraped.

One statement over the outbox's `(state, next_attempt_at)` index, at most every scrape
(15 s by default), whichever process answers; nothing is kept between scrapes, so every
worker answers the same and none has to publish a gauge of its own.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy import func, select

from app.context import AppContext
from app.metrics import Metric, gauge
from app.models import DeliveryJob, utcnow

log = logging.getLogger(__name__)

# A scrape waits this long for the backlog, then answers without it.
_QUERY_SECONDS = 2.0


async def outbox_gauges(ctx: AppContext) -> list[Metric]:
    """The outbox's backlog as gauges; none while the database does not answer (the
    scrape still answers the counters, and the missing series say why)."""
    if ctx.db_guard.is_down:
        return []
    now = utcnow()
    due = DeliveryJob.next_attempt_at <= now
    statement = select(
        func.count().filter(due),
        func.min(DeliveryJob.next_attempt_at).filter(due),
        func.count().filter(DeliveryJob.state == "pending"),
        func.count().filter(DeliveryJob.state == "in_flight"),
    ).where(DeliveryJob.state.in_(("pending", "in_flight")))
    try:
        async with ctx.sessionmaker() as session:
            row = (await asyncio.wait_for(session.execute(statement), _QUERY_SECONDS)).one()
    except Exception as exc:
        log.warning("outbox backlog not read", extra={"fields": {"error": repr(exc)}})
        return []
    backlog, oldest, pending, in_flight = row
    age = 0.0 if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds())
    return [
        gauge(
            "outbox_backlog_jobs",
            "Delivery jobs due now and not yet sent: waiting for a worker, or in flight "
            "past their lease",
            backlog,
        ),
        gauge(
            "outbox_oldest_due_job_age_seconds",
            "How long the oldest due delivery job has waited since it became due (0: none)",
            age,
        ),
        gauge(
            "outbox_pending_jobs",
            "Delivery jobs waiting, due or not (retries after a backoff included)",
            pending,
        ),
        gauge("outbox_in_flight_jobs", "Delivery jobs a worker is sending now", in_flight),
    ]


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
