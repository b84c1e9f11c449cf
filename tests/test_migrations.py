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

# Migration 0003 adds its checks on existing tables NOT VALID on PostgreSQL; reflected, such
# a constraint carries a `dialect_options` argument SQLAlchemy's constructor does not know.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Can't validate argument 'dialect_options':sqlalchemy.exc.SAWarning"
)


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


async def _bumps(url: str) -> list[tuple[str, int]]:
    """Each kind of directory change, and how much it moved the organization's version."""
    from sqlalchemy import text

    org, other = uuid.uuid4(), uuid.uuid4()
    user, group = uuid.uuid4(), uuid.uuid4()
    steps = [
        (
            "new number",
            "INSERT INTO phone_numbers (id, org_id, number, sms_extension, "
            "created_at, updated_at) VALUES (:n, :org, '+14155550100', '101', :now, :now)",
        ),
        (
            "new user",
            "INSERT INTO users (id, org_id, username, role, sms_enabled, "
            "auto_reply_enabled, created_at, updated_at) "
            "VALUES (:user, :org, 'bob', 'member', false, false, :now, :now)",
        ),
        (
            "new extension",
            "INSERT INTO extensions (org_id, extension, user_id) VALUES (:org, '101', :user)",
        ),
        ("auto-reply switched on", "UPDATE users SET auto_reply_enabled = true WHERE id = :user"),
        (
            "auto-reply hours",
            'UPDATE users SET auto_reply_schedule = \'{"timezone": "UTC"}\' WHERE id = :user',
        ),
        ("away periods", "UPDATE users SET auto_reply_away = '[]' WHERE id = :user"),
        ("display name", "UPDATE users SET display_name = 'Bob' WHERE id = :user"),
        ("number re-routed", "UPDATE phone_numbers SET sms_extension = '102' WHERE id = :n"),
        (
            "new group",
            "INSERT INTO groups (id, org_id, name, created_at, updated_at) "
            "VALUES (:group, :org, 'desk', :now, :now)",
        ),
        ("after-hours reply on", "UPDATE groups SET after_hours_enabled = true WHERE id = :group"),
        (
            "after-hours hours",
            'UPDATE groups SET after_hours_schedule = \'{"timezone": "UTC"}\' WHERE id = :group',
        ),
        (
            "member added",
            "INSERT INTO group_members (group_id, user_id, org_id, username) "
            "VALUES (:group, :user, :org, 'bob')",
        ),
        ("member removed", "DELETE FROM group_members WHERE group_id = :group"),
        ("help text", "UPDATE organizations SET help_text = 'Call us' WHERE id = :org"),
        ("organization renamed", "UPDATE organizations SET name = 'B' WHERE id = :org"),
        (
            "organization's time zone",
            "UPDATE organizations SET timezone = 'Europe/Paris', "
            # A colon escaped, or text() would read ":00" as a parameter.
            'quiet_hours = \'{"start": "21\\:00", "end": "08\\:00"}\' WHERE id = :org',
        ),
        ("number moved away", "UPDATE phone_numbers SET org_id = :other WHERE id = :n"),
    ]
    from datetime import UTC, datetime

    params = {
        "org": org,
        "other": other,
        "user": user,
        "group": group,
        "n": uuid.uuid4(),
        "now": datetime.now(UTC),
    }
    if url.startswith("sqlite"):
        # Stored as SQLAlchemy stores them there: UUIDs as hex, times as text.
        params = {
            k: v.hex if isinstance(v, uuid.UUID) else str(v) if isinstance(v, datetime) else v
            for k, v in params.items()
        }
    engine = create_async_engine(url)
    seen = []
    try:
        async with engine.begin() as conn:
            for org_id in ("org", "other"):
                await conn.execute(
                    text(
                        "INSERT INTO organizations (id, name, created_at) VALUES (:id, 'A', :now)"
                    ),
                    {"id": params[org_id], "now": params["now"]},
                )
        version = text("SELECT directory_version FROM organizations WHERE id = :org")
        for label, sql in steps:
            async with engine.begin() as conn:
                before = (await conn.execute(version, params)).scalar_one()
                await conn.execute(text(sql), params)
                after = (await conn.execute(version, params)).scalar_one()
            seen.append((label, after - before))
        async with engine.begin() as conn:
            moved_to = (await conn.execute(version, {"org": params["other"]})).scalar_one()
        seen.append(("number moved in", moved_to))
    finally:
        await engine.dispose()
    return seen


EXPECTED_BUMPS = [
    ("new number", 1),
    ("new user", 0),  # reachable only through an extension
    ("new extension", 1),
    ("auto-reply switched on", 1),
    ("auto-reply hours", 1),
    ("away periods", 1),
    ("display name", 0),  # not part of any route
    ("number re-routed", 1),
    ("new group", 0),
    ("after-hours reply on", 1),
    ("after-hours hours", 1),
    ("member added", 1),
    ("member removed", 1),
    ("help text", 1),
    ("organization renamed", 0),
    ("organization's time zone", 0),  # schedules carry their own zone
    ("number moved away", 1),
    ("number moved in", 1),
]


async def test_directory_changes_bump_the_version_on_postgresql(database_url: str) -> None:
    assert await _bumps(database_url) == EXPECTED_BUMPS


async def test_directory_changes_bump_the_version_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}"
    await upgrade_to_head(url)
    assert await _bumps(url) == EXPECTED_BUMPS
