"""inbox walk order: each party's conversation index ends with the id

The inbox reads each part of a user's visibility (owned, in a pair, each group's) in
the order of its `(party, last_message_at)` index, newest first, ties broken by id. The
index did not hold the id, so every walk sorted its rows again within equal instants
(an incremental sort: ~0.8 ms of a 2,800-row walk, a third of a search's page). With the
id as the last key the index hands them over in page order.

The four indexes are built again. On a large `conversations` table run this when few
messages arrive: each is rebuilt under a lock that holds writes to the table.

Revision ID: 0009_inbox_walk_order
Revises: 0008_search_term_numbers
Create Date: 2026-12-02 05:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_inbox_walk_order"
down_revision: str | None = "0008_search_term_numbers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTIES = ("owner_user", "owner_group", "user_a", "user_b")


def _rebuild(with_id: bool) -> None:
    for party in PARTIES:
        name = f"ix_conversations_{party}"
        op.drop_index(name, table_name="conversations")
        columns = [f"{party}_id", "last_message_at", *(["id"] if with_id else [])]
        op.create_index(name, "conversations", columns)


def upgrade() -> None:
    _rebuild(with_id=True)


def downgrade() -> None:
    _rebuild(with_id=False)
