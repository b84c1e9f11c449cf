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
