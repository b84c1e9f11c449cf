"""delivery pacing: the send slot a waiting job holds

A job that must wait for its number's send rate is given its turn once (a slot in the
number's schedule) and waits for it in the outbox without being claimed again; when it
comes due it is sent at that slot without asking the rate again.

Revision ID: 0005
Revises: 0004_schedules
Create Date: 2026-12-01 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004_schedules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery_jobs") as batch:
        batch.add_column(sa.Column("paced_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_jobs") as batch:
        batch.drop_column("paced_at")
