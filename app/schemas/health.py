"""What the operations endpoints answer when all is well."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Literal["ok"]] = Field(
        description="Each dependency asked (the database, Redis when configured).",
        examples=[{"database": "ok", "redis": "ok"}],
    )
