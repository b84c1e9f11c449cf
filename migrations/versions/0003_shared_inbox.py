"""shared inbox: contacts, conversation status and assignee, internal notes

- `contacts`: one per (organization, phone number); the name is stored only as
  ciphertext (bound to the row and the organization).
- `contact_search_terms`: the blind index that finds contacts by parts of their name
  or number: keyed hashes (BIGINT), looked up by term, deleted with their contact.
- `conversations.status` (`open` | `closed`, existing rows open) and
  `conversations.assignee_user_id`.
- `messages.direction` may be `note`.

On PostgreSQL the new constraints on the existing tables are added NOT VALID: they
hold for every existing row by construction (a column just added with the default
`open`, a column of NULLs, a direction check wider than the one every row passed), so
scanning `messages` and `conversations` under an exclusive lock to prove it would only
block inbound webhooks. New and changed rows are checked as usual.

Downgrade deletes the notes (the old direction check refuses them) and the contacts.

Revision ID: 0003_shared_inbox
Revises: 0002
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_shared_inbox"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIRECTIONS_BEFORE = "direction IN ('internal', 'outbound', 'inbound')"
DIRECTIONS = "direction IN ('internal', 'outbound', 'inbound', 'note')"
STATUSES = "status IN ('open', 'closed')"


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("phone_number", sa.String(length=16), nullable=False),
        sa.Column("name_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_contacts_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        sa.UniqueConstraint("org_id", "phone_number", name=op.f("uq_contacts_org_id_phone_number")),
    )
    op.create_index("ix_contacts_org_id_id", "contacts", ["org_id", "id"], unique=False)
    op.create_table(
        "contact_search_terms",
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_contact_search_terms_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("term", "contact_id", name=op.f("pk_contact_search_terms")),
    )
    op.create_index(
        op.f("ix_contact_search_terms_contact_id"),
        "contact_search_terms",
        ["contact_id"],
        unique=False,
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE conversations "
            "ADD COLUMN status VARCHAR(16) DEFAULT 'open' NOT NULL, "
            "ADD COLUMN assignee_user_id UUID, "
            f"ADD CONSTRAINT ck_conversations_status CHECK ({STATUSES}) NOT VALID, "
            "ADD CONSTRAINT fk_conversations_assignee_user_id_users "
            "FOREIGN KEY (assignee_user_id) REFERENCES users (id) NOT VALID"
        )
        op.execute(
            "ALTER TABLE messages DROP CONSTRAINT ck_messages_direction, "
            f"ADD CONSTRAINT ck_messages_direction CHECK ({DIRECTIONS}) NOT VALID"
        )
        return
    # SQLite: batch mode copies each table with its new definition.
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), server_default="open", nullable=False)
        )
        batch.add_column(sa.Column("assignee_user_id", sa.Uuid(), nullable=True))
        batch.create_check_constraint("status", STATUSES)
        batch.create_foreign_key(
            op.f("fk_conversations_assignee_user_id_users"), "users", ["assignee_user_id"], ["id"]
        )
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint(op.f("ck_messages_direction"), type_="check")
        batch.create_check_constraint("direction", DIRECTIONS)


def downgrade() -> None:
    op.execute("DELETE FROM messages WHERE direction = 'note'")
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE messages DROP CONSTRAINT ck_messages_direction, "
            f"ADD CONSTRAINT ck_messages_direction CHECK ({DIRECTIONS_BEFORE})"
        )
        op.execute(
            "ALTER TABLE conversations DROP CONSTRAINT fk_conversations_assignee_user_id_users, "
            "DROP CONSTRAINT ck_conversations_status, "
            "DROP COLUMN assignee_user_id, DROP COLUMN status"
        )
    else:
        with op.batch_alter_table("messages") as batch:
            batch.drop_constraint(op.f("ck_messages_direction"), type_="check")
            batch.create_check_constraint("direction", DIRECTIONS_BEFORE)
        with op.batch_alter_table("conversations") as batch:
            batch.drop_constraint(
                op.f("fk_conversations_assignee_user_id_users"), type_="foreignkey"
            )
            batch.drop_constraint(op.f("ck_conversations_status"), type_="check")
            batch.drop_column("assignee_user_id")
            batch.drop_column("status")
    op.drop_index(op.f("ix_contact_search_terms_contact_id"), table_name="contact_search_terms")
    op.drop_table("contact_search_terms")
    op.drop_index("ix_contacts_org_id_id", table_name="contacts")
    op.drop_table("contacts")
