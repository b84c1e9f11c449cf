"""search term numbers: each contact search term carries its contact's number

The inbox's search by name filters conversations by the numbers of the contacts holding
a piece of the name. Read through the contacts, that was one visit per holder (2,000
contacts hold "gon" in an address book of 100,000: ~6 ms a search); with the number in
the terms' primary-key index (`INCLUDE`, PostgreSQL), it is one index-only range read
(~0.2 ms). The number is the contact's own, stored in plain on the contact already; a
contact's terms are rewritten whenever its number changes.

Existing terms get their contact's number. On a large address book the backfill rewrites
every term once: run it when searches are few.

Revision ID: 0008_search_term_numbers
Revises: 0007_delivery_speed
Create Date: 2026-12-02 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_search_term_numbers"
down_revision: str | None = "0007_delivery_speed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = (
    "UPDATE contact_search_terms SET phone_number = "
    "(SELECT contacts.phone_number FROM contacts "
    "WHERE contacts.id = contact_search_terms.contact_id)"
)


def upgrade() -> None:
    with op.batch_alter_table("contact_search_terms") as batch:
        batch.add_column(sa.Column("phone_number", sa.String(16), nullable=True))
    op.execute(_BACKFILL)
    with op.batch_alter_table("contact_search_terms") as batch:
        batch.alter_column("phone_number", existing_type=sa.String(16), nullable=False)
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE contact_search_terms DROP CONSTRAINT pk_contact_search_terms, "
            "ADD CONSTRAINT pk_contact_search_terms "
            "PRIMARY KEY (term, contact_id) INCLUDE (phone_number)"
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE contact_search_terms DROP CONSTRAINT pk_contact_search_terms, "
            "ADD CONSTRAINT pk_contact_search_terms PRIMARY KEY (term, contact_id)"
        )
    with op.batch_alter_table("contact_search_terms") as batch:
        batch.drop_column("phone_number")
