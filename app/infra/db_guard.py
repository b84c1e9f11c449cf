"""Knowing when the database is silent, failing fast while it is, and noticing at once
when it answers again.

A database that goes silent (a failover, a firewall that dropped its state) leaves
connections open that never answer. The engine's timeouts bound each wait
(`DATABASE_TIMEOUT_SECONDS`); the first timeout or lost connection marks the database
down here, which drops the pooled connections (they may all be dead) and starts a probe
that asks the database every `probe_interval` seconds. While it is down, requests that
need it are answered 503 at once instead of each waiting out a timeout; the first probe
that gets an answer marks it up again.

The guard also keeps the age of every connection checked out of the pool: a connection
held far past every timeout means the process can no longer serve (its liveness check
says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)


class DatabaseGuard:
    """One process's view of whether its database answers."""

    def __init__(self, engine: AsyncEngine, *, timeout: float, probe_interval: float = 0.5) -> None:
        self._engine = engine
        self._timeout = timeout
        self._probe_interval = probe_interval
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        self._checked_out: dict[int, float] = {}
        pool_events = engine.sync_engine
        event.listen(pool_events, "checkout", self._on_checkout)
        event.listen(pool_events, "checkin", self._on_checkin)
        event.listen(pool_events, "invalidate", self._on_checkin)

    @property
    def is_down(self) -> bool:
        """Whether the database is known not to answer right now."""
        return self._down_since is not None

    def mark_down(self, reason: str) -> None:
        """A timeout or a lost connection: fail fast until a probe gets an answer."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        log.error("database not answering; failing fast", extra={"fields": {"reason": reason}})
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_up(), name="db-probe")

    async def _probe_until_up(self) -> None:
        # The pooled connections may all be dead: new ones from here on.
        await self._engine.dispose(close=False)
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                async with asyncio.timeout(self._timeout), self._engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except Exception as exc:  # still silent, or refusing: keep asking
                log.debug("database probe failed: %r", exc)
                continue
            down_for = time.monotonic() - (self._down_since or time.monotonic())
            self._down_since = None
            log.warning(
                "database answers again", extra={"fields": {"down_seconds": round(down_for, 1)}}
            )
            return

    def oldest_checkout_seconds(self) -> float:
        """How long the longest-held pooled connection has been out (0 when none is)."""
        if not self._checked_out:
            return 0.0
        return time.monotonic() - min(self._checked_out.values())

    async def close(self) -> None:
        """Stop probing."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(BaseException):
                await self._probe

    def _on_checkout(self, _dbapi: Any, record: Any, _proxy: Any) -> None:
        self._checked_out[id(record)] = time.monotonic()

    def _on_checkin(self, _dbapi: Any, record: Any, *_: Any) -> None:
        self._checked_out.pop(id(record), None)
