"""directory version: a per-organization counter that every routing change bumps

Inbound webhooks route through a per-process cache of each number's route; every
stored inbound message checks, in the same statement, that its organization's
`directory_version` is still the one the route was read at. Triggers bump the counter
on every change to what a route is made of, whoever makes it (API, CLI or SQL).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the columns whose change alters a route (None: any change), for UPDATE.
# Inserts and deletes always count, except new users and groups: a route reaches them
# only through an extension, whose insert counts.
WATCHED: dict[str, tuple[str, ...] | None] = {
    "phone_numbers": ("org_id", "number", "sms_extension"),
    "extensions": None,
    "users": (
        "org_id",
        "username",
        "sms_enabled",
        "outbound_sms_number",
        "auto_reply_enabled",
        "auto_reply_ciphertext",
        "deactivated_at",
    ),
    "groups": ("org_id", "outbound_sms_number", "deleted_at"),
    "group_members": None,
}
COUNT_INSERTS = {"phone_numbers", "extensions", "group_members"}


def _events(table: str) -> list[str]:
    columns = WATCHED[table]
    update = "UPDATE" if columns is None else f"UPDATE OF {', '.join(columns)}"
    return (["INSERT"] if table in COUNT_INSERTS else []) + [update, "DELETE"]


def upgrade() -> None:
    op.add_column(
        "organizations",
        sa.Column("directory_version", sa.BigInteger(), server_default="0", nullable=False),
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION bump_directory_version() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP IN ('UPDATE', 'DELETE') THEN
                UPDATE organizations SET directory_version = directory_version + 1
                 WHERE id = OLD.org_id;
              END IF;
              IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.org_id <> OLD.org_id) THEN
                UPDATE organizations SET directory_version = directory_version + 1
                 WHERE id = NEW.org_id;
              END IF;
              RETURN NULL;
            END $$
            """
        )
        for table in WATCHED:
            op.execute(
                f"CREATE TRIGGER trg_{table}_directory_version "
                f"AFTER {' OR '.join(_events(table))} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION bump_directory_version()"
            )
        op.execute(
            """
            CREATE FUNCTION bump_own_directory_version() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              NEW.directory_version := OLD.directory_version + 1;
              RETURN NEW;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER trg_organizations_directory_version "
            "BEFORE UPDATE OF help_text ON organizations "
            "FOR EACH ROW EXECUTE FUNCTION bump_own_directory_version()"
        )
        return
    # SQLite: one trigger per table and event.
    for table in WATCHED:
        for event in _events(table):
            row = "OLD" if event == "DELETE" else "NEW"
            name = f"trg_{table}_{event.split()[0].lower()}_directory_version"
            also_old = (
                "UPDATE organizations SET directory_version = directory_version + 1 "
                "WHERE id = OLD.org_id AND OLD.org_id <> NEW.org_id; "
                if event.startswith("UPDATE")
                else ""
            )
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW BEGIN "
                f"{also_old}"
                "UPDATE organizations SET directory_version = directory_version + 1 "
                f"WHERE id = {row}.org_id; END"
            )
    op.execute(
        "CREATE TRIGGER trg_organizations_update_directory_version "
        "AFTER UPDATE OF help_text ON organizations FOR EACH ROW BEGIN "
        "UPDATE organizations SET directory_version = directory_version + 1 "
        "WHERE id = NEW.id; END"
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for table in [*WATCHED, "organizations"]:
            op.execute(f"DROP TRIGGER trg_{table}_directory_version ON {table}")
        op.execute("DROP FUNCTION bump_directory_version()")
        op.execute("DROP FUNCTION bump_own_directory_version()")
    else:
        for table in WATCHED:
            for event in _events(table):
                op.execute(f"DROP TRIGGER trg_{table}_{event.split()[0].lower()}_directory_version")
        op.execute("DROP TRIGGER trg_organizations_update_directory_version")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("directory_version")
