"""The migrations build exactly the schema the models describe, and undo cleanly."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from app.migrate import alembic_config, upgrade_to_head
from app.models import Base
from tests.conftest import PG_BASE, _admin_execute


async def _diff(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_models_match_migrations_on_postgresql(database_url: str) -> None:
    assert await _diff(database_url) == []


async def test_downgrade_and_upgrade_on_postgresql() -> None:
    name = f"msg_migr_{uuid.uuid4().hex[:8]}"
    await _admin_execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_BASE}/{name}"
    try:
        await upgrade_to_head(url)
        assert {"messages", "users", "delivery_jobs"} <= await _tables(url)
        await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
        assert await _tables(url) <= {"alembic_version"}
        await upgrade_to_head(url)
        assert await _diff(url) == []
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("direction", ["up-down-up"])
async def test_migrations_on_the_embedded_sqlite(tmp_path: Path, direction: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade_to_head(url)
    assert await _diff(url) == []
    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    assert await _tables(url) <= {"alembic_version"}
    await upgrade_to_head(url)
    assert await _diff(url) == []
