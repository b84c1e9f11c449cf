"""schedules: organization settings, auto-responder hours, group after-hours replies

The organization gains its time zone and quiet hours; a user's auto-responder gains a
schedule and away periods; a group gains an after-hours reply (enabled, text encrypted
like the auto-reply text, schedule). Schedules and away periods are JSON, as the API
shows them.

What the inbound decision reads travels in each process's route cache, so every change
to it must bump the organization's `directory_version` (migration 0002): triggers of
their own here on the new columns of users and groups. The organization's time zone
and quiet hours are read by no inbound decision (a schedule stores its own zone), so
they bump nothing; its HELP text already does.

Revision ID: 0004_schedules
Revises: 0003_shared_inbox
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_schedules"
down_revision: str | None = "0003_shared_inbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> (trigger name, the new columns whose change alters a route)
WATCHED: dict[str, tuple[str, tuple[str, ...]]] = {
    "users": (
        "trg_users_responder_hours_directory_version",
        ("auto_reply_schedule", "auto_reply_away"),
    ),
    "groups": (
        "trg_groups_after_hours_directory_version",
        ("after_hours_enabled", "after_hours_ciphertext", "after_hours_schedule"),
    ),
}


def upgrade() -> None:
    op.add_column(
        "organizations",
        sa.Column(
            "timezone", sa.String(length=64), server_default="America/New_York", nullable=False
        ),
    )
    op.add_column("organizations", sa.Column("quiet_hours", sa.JSON(), nullable=True))
    op.add_column("users", sa.Column("auto_reply_schedule", sa.JSON(), nullable=True))
    op.add_column("users", sa.Column("auto_reply_away", sa.JSON(), nullable=True))
    op.add_column(
        "groups",
        sa.Column("after_hours_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("groups", sa.Column("after_hours_ciphertext", sa.LargeBinary(), nullable=True))
    op.add_column("groups", sa.Column("after_hours_schedule", sa.JSON(), nullable=True))
    postgresql = op.get_context().dialect.name == "postgresql"
    for table, (trigger, columns) in WATCHED.items():
        if postgresql:
            # bump_directory_version() is migration 0002's.
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER UPDATE OF {', '.join(columns)} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION bump_directory_version()"
            )
        else:
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER UPDATE OF {', '.join(columns)} ON {table} "
                "FOR EACH ROW BEGIN UPDATE organizations "
                "SET directory_version = directory_version + 1 WHERE id = NEW.org_id; END"
            )


def downgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    for table, (trigger, _) in WATCHED.items():
        op.execute(
            f"DROP TRIGGER {trigger} ON {table}" if postgresql else f"DROP TRIGGER {trigger}"
        )
    dropped = {
        "groups": ("after_hours_schedule", "after_hours_ciphertext", "after_hours_enabled"),
        "users": ("auto_reply_away", "auto_reply_schedule"),
        "organizations": ("quiet_hours", "timezone"),
    }
    for table, columns in dropped.items():
        for column in columns:
            # SQLite drops a column in place (3.35 and later): rebuilding the table, as
            # batch mode does, would drop migration 0002's triggers on it too.
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
