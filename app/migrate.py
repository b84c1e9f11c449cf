"""Run Alembic from code: the embedded default migrates itself at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config for this project's migrations and the given database."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url)
    cfg.attributes["configure_logger"] = False
    return cfg


async def upgrade_to_head(database_url: str) -> None:
    """`alembic upgrade head`, in a thread because Alembic's async env runs its own loop."""
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), "head")
