"""Readiness: can this process reach what it needs?"""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.context import AppContext


async def check_readiness(ctx: AppContext, limit_seconds: float = 2.0) -> dict[str, str]:
    """'ok' or 'unreachable' for the database and, when configured, Redis."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(limit_seconds):
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    if ctx.redis is not None:
        try:
            async with asyncio.timeout(limit_seconds):
                await ctx.redis.ping()
            checks["redis"] = "ok"
        except Exception:
            checks["redis"] = "unreachable"
    return checks


def check_liveness(ctx: AppContext) -> dict[str, str]:
    """What keeps this process from serving, if anything: an essential background task
    that ended (the delivery worker, the stream guard), or a database connection held
    far past every timeout (a wedged pool that only a restart frees). Empty: alive.

    A database that is down is not a liveness problem: the process answers 503 at once
    and recovers by itself when it answers again (readiness says so)."""
    problems: dict[str, str] = {}
    for name, task in ctx.essential.items():
        if task.done():
            problems[name] = "stopped"
    stuck_after = ctx.settings.database_timeout_seconds * 3 + 30
    held = ctx.db_guard.oldest_checkout_seconds()
    if held > stuck_after:
        problems["database connection"] = f"held for {held:.0f} s"
    return problems
