"""scheduled messages: when an outbound message goes, and its sender's list of them

- `messages.send_at`: when a scheduled message (or one held by quiet hours) goes to the
  carrier; null for every existing message. Its delivery job is due at that instant, so
  the worker's claim finds it by the outbox's index like any other due job.
- `ix_messages_scheduled`: a sender's scheduled messages, soonest first; partial, so it
  holds only messages given a time to go (not partial on `status`: a predicate naming
  it would make every status change of every message update all of its indexes).

Adding a nullable column without a default changes no row. Building the index reads
`messages` once while writes to it wait; where that table is large, build it beforehand
without blocking writes (`CREATE INDEX CONCURRENTLY ix_messages_scheduled ON messages
(sender_user_id, send_at, id) WHERE send_at IS NOT NULL`, after `ALTER TABLE messages
ADD COLUMN send_at timestamptz`): this migration then keeps both.

Revision ID: 0006_scheduled_messages
Revises: 0005
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_scheduled_messages"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GIVEN_A_TIME = sa.text("send_at IS NOT NULL")


def upgrade() -> None:
    # Either may have been made beforehand on PostgreSQL (see above); SQLite knows no
    # IF NOT EXISTS for a column.
    postgresql = op.get_context().dialect.name == "postgresql"
    op.add_column(
        "messages",
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        if_not_exists=postgresql or None,
    )
    op.create_index(
        "ix_messages_scheduled",
        "messages",
        ["sender_user_id", "send_at", "id"],
        unique=False,
        if_not_exists=True,
        postgresql_where=GIVEN_A_TIME,
        sqlite_where=GIVEN_A_TIME,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_scheduled", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("send_at")
