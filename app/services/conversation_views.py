"""Conversations as the API and the event stream show them.

One statement reads what a page of conversations shows: the conversation, its owner's
and its assignee's names, its contact (by the external number), the id of its newest
message and the viewer's unread count, each a subquery evaluated only for the rows the
page keeps; a second reads those newest messages. Contact names are decrypted here.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.models import Contact, Conversation, Group, Message, User
from app.services import conversations
from app.services.message_rows import RENDERED_COLUMNS, render_message
from app.services.sealing import open_contact_name
from app.vocabulary import format_instant


def _username(user_id: Any) -> ColumnElement[str | None]:
    return select(User.username).where(User.id == user_id).scalar_subquery()


def contact_of(c: Any) -> Select[uuid.UUID, bytes]:
    """Conversation `c`'s contact (its id and sealed name): its organization's contact
    with its external number, as a query correlated to `c`. Joined laterally, one index
    probe for both columns; `with_only_columns` narrows it for other uses."""
    return select(
        Contact.id.label("contact_id"), Contact.name_ciphertext.label("contact_name_ciphertext")
    ).where(Contact.org_id == c.org_id, Contact.phone_number == c.external_number)


def _contact(c: Any, column: Any) -> ColumnElement[Any]:
    return contact_of(c).with_only_columns(column).scalar_subquery()


def view_columns(
    viewer_id: Any, c: Any = Conversation, newest_id: bool = True, contact: bool = True
) -> list[Any]:
    """What a view is built from, for `select(*view_columns(...))` over conversations (or
    `c`, an alias of them); `viewer_id`: whose unread count (None: filled in later);
    `newest_id`: the id of the newest message, for a caller that reads it afterwards;
    `contact`: the contact's columns, unless the caller joins `contact_of` itself."""
    newest = (
        select(Message.id)
        .where(Message.conversation_id == c.id)
        .order_by(Message.conversation_id.desc(), Message.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    columns: list[Any] = [
        c.id,
        c.org_id,
        c.kind,
        c.external_number,
        c.owner_user_id,
        c.owner_group_id,
        c.status,
        c.last_message_at,
        c.created_at,
        _username(c.owner_user_id).label("owner_username"),
        select(Group.name)
        .where(Group.id == c.owner_group_id)
        .scalar_subquery()
        .label("group_name"),
        _username(c.user_a_id).label("user_a"),
        _username(c.user_b_id).label("user_b"),
        _username(c.assignee_user_id).label("assignee"),
    ]
    if contact:
        columns += [
            _contact(c, Contact.id).label("contact_id"),
            _contact(c, Contact.name_ciphertext).label("contact_name_ciphertext"),
        ]
    if newest_id:
        columns.append(newest.label("last_message_id"))
    if viewer_id is not None:
        columns.append(conversations.unread_count(c.id, viewer_id).label("unread"))
    return columns


@dataclass(slots=True)
class ConversationView:
    """One conversation as shown; `unread_count` is the viewer's. Made for each row of
    every page and never changed; not frozen, since a frozen dataclass sets each field
    through `object.__setattr__` (2.7 us a view against 0.45: a sixth of a page's
    rendering)."""

    id: uuid.UUID
    org_id: uuid.UUID
    kind: str
    external_number: str | None
    owner: dict[str, str] | None
    participants: list[str]
    status: str
    assignee: str | None
    contact_id: uuid.UUID | None
    contact_name: str | None
    last_message: dict[str, Any] | None
    last_message_at: datetime
    created_at: datetime
    group_id: uuid.UUID | None
    unread_count: int

    def render(self, unread_count: int | None = None) -> dict[str, Any]:
        """The API's and the event stream's shape (`unread_count`: another viewer's)."""
        return {
            "id": str(self.id),
            "kind": self.kind,
            "external_number": self.external_number,
            "owner": self.owner,
            "participants": self.participants,
            "status": self.status,
            "assignee": self.assignee,
            "contact": (
                {"id": str(self.contact_id), "name": self.contact_name}
                if self.contact_id is not None
                else None
            ),
            "last_message": self.last_message,
            "last_message_at": format_instant(self.last_message_at),
            "unread_count": self.unread_count if unread_count is None else unread_count,
            "created_at": format_instant(self.created_at),
            "group_id": str(self.group_id) if self.group_id else None,
        }


def make_view(
    keyring: Keyring, r: Mapping[Any, Any], last_message: dict[str, Any] | None
) -> ConversationView:
    """A view from the values `view_columns` names (a row's mapping, or a driver record)
    and the newest message as rendered."""
    if r["owner_group_id"] is not None:
        owner = {"type": "group", "id": str(r["owner_group_id"]), "name": r["group_name"] or ""}
    elif r["owner_user_id"] is not None:
        owner = {"type": "user", "id": str(r["owner_user_id"]), "name": r["owner_username"] or ""}
    else:
        owner = None
    contact_id = r["contact_id"]
    return ConversationView(
        id=r["id"],
        org_id=r["org_id"],
        kind=r["kind"],
        external_number=r["external_number"],
        owner=owner,
        participants=[u for u in (r["user_a"], r["user_b"]) if u is not None],
        status=r["status"],
        assignee=r["assignee"],
        contact_id=contact_id,
        contact_name=(
            open_contact_name(keyring, contact_id, r["org_id"], r["contact_name_ciphertext"])
            if contact_id is not None
            else None
        ),
        last_message=last_message,
        last_message_at=r["last_message_at"],
        created_at=r["created_at"],
        group_id=r["owner_group_id"],
        unread_count=int(r.get("unread") or 0),
    )


async def build_views(
    keyring: Keyring, session: AsyncSession, rows: Sequence[Row[Any]]
) -> list[ConversationView]:
    """Views of rows selected with `view_columns`, their newest messages read in one go."""
    newest_ids = [r.last_message_id for r in rows if r.last_message_id is not None]
    newest = (
        {
            m.id: render_message(keyring, m)
            for m in await session.execute(
                select(*RENDERED_COLUMNS).where(Message.id.in_(newest_ids))
            )
        }
        if newest_ids
        else {}
    )
    return [make_view(keyring, r._mapping, newest.get(r.last_message_id)) for r in rows]


def views_query(viewer_id: uuid.UUID | None) -> Select[Any]:
    """`select` of view columns over conversations, for the caller to narrow and order."""
    return select(*view_columns(viewer_id))


async def view_of(
    keyring: Keyring,
    session: AsyncSession,
    conversation_id: uuid.UUID,
    viewer_id: uuid.UUID | None,
    where: ColumnElement[bool] | None = None,
) -> ConversationView | None:
    """One conversation's view (None when there is none, or `where` refuses it)."""
    stmt = views_query(viewer_id).where(Conversation.id == conversation_id)
    if where is not None:
        stmt = stmt.where(where)
    rows = (await session.execute(stmt)).all()
    views = await build_views(keyring, session, rows)
    return views[0] if views else None
