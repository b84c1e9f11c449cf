"""The shared inbox: the caller's and the caller's groups' conversations, newest activity
first, filtered by status, assignee, unread and a search, paged by keyset cursors that
stay right while conversations move.

Activity moves rows: a conversation that gets a message while someone pages jumps to
the top, so ordering by the current activity would show it twice or never. The first
page fixes a snapshot instant S (carried in every cursor); each page orders by the
activity as of S. For almost every conversation that is its `last_message_at` (not
after S); for the few with activity since, it is found from their messages: the time
of the newest one stamped at or before S (a short walk back on the (conversation_id,
id) index). Every write of a message stamps the conversation and the message with the
same instant, so both answers agree exactly. A conversation first seen after S waits
for the next first page. Status, assignee and unread are as they are now.

One statement reads a page: the caller's visible conversations in page order, walked
until the page is full, each tested on its own columns (status, assignee, the cursor's
place) and then by the tests that read other tables (unread, the search); then what the
page shows (`conversation_views`) for the page's rows only. On PostgreSQL each part of
the caller's visibility (owned, in a pair, each group's) is walked on its own index in
activity order and stops at the page's end, the parts merged (`_in_index_order`): no
page reads or sorts all the conversations a user sees. The statement is compiled once
per shape of filters and sent straight to the driver, the newest message of each
conversation joined in, no ORM objects. On SQLite (the embedded default) one query
orders all the visible conversations (`_in_one_scan`); it runs through a session and
the newest messages are read after it.

A search by name checks each candidate's decrypted contact name (`contact_search`);
candidates it turns down are skipped and the page is filled from the next ones.
"""

from __future__ import annotations

import base64
import binascii
import operator
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Uuid,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.sql import Subquery
from sqlalchemy.sql.util import ClauseAdapter

from app.context import AppContext
from app.db import DriverStatement, driver_connection
from app.errors import AppError, Invalid
from app.models import Contact, ContactSearchTerm, Conversation, Message, User, utcnow
from app.models.base import UTCDateTime
from app.security import hash_token
from app.services import contacts, conversations, send_store
from app.services.auth import Principal, authenticate_user, principal_of, token_owner
from app.services.contact_search import Search, parse_search
from app.services.conversation_views import (
    ConversationView,
    build_views,
    contact_of,
    make_view,
    view_columns,
)
from app.services.message_rows import RENDERED_COLUMNS, render_message


@dataclass(frozen=True)
class InboxFilter:
    """What `GET /v1/conversations` narrows the list to (None: no filter)."""

    status: str | None = None
    assignee: str | None = None  # "me", "none" or a username
    unread: bool | None = None
    q: str | None = None


@dataclass(frozen=True)
class _Position:
    """Where a page ended: the snapshot, and the last conversation's place in it."""

    snapshot: datetime
    sort_at: datetime
    conversation_id: uuid.UUID


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(at: datetime) -> int:
    # Exact: a float timestamp could round a microsecond away, and the keyset compares
    # for equality.
    return (at - _EPOCH) // _MICROSECOND


def _encode_cursor(p: _Position) -> str:
    raw = (
        _micros(p.snapshot).to_bytes(8, "big", signed=True)
        + _micros(p.sort_at).to_bytes(8, "big", signed=True)
        + p.conversation_id.bytes
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> _Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if len(raw) != 32:
            raise ValueError
        snapshot, sort_at = (
            _EPOCH + int.from_bytes(raw[i : i + 8], "big", signed=True) * _MICROSECOND
            for i in (0, 8)
        )
        if sort_at > snapshot:
            raise ValueError
        return _Position(snapshot, sort_at, uuid.UUID(bytes=raw[16:]))
    except (binascii.Error, ValueError, OverflowError, OSError):
        raise AppError("The cursor is not one this API returned.", code="invalid_cursor") from None


def _activity_as_of(snapshot: Any) -> ColumnElement[datetime]:
    """A conversation's last activity as it was at `snapshot` (a value or a parameter):
    NULL for one that had no message yet."""
    before = (
        select(Message.created_at)
        .where(Message.conversation_id == Conversation.id, Message.created_at <= snapshot)
        .order_by(Message.conversation_id.desc(), Message.id.desc())
        .limit(literal_column("1"))
        .scalar_subquery()
    )
    return case(
        (Conversation.last_message_at <= snapshot, Conversation.last_message_at), else_=before
    )


# The conversation's columns a page reads (`view_columns` and the tests).
_SHOWN = frozenset(
    {
        "id",
        "org_id",
        "kind",
        "external_number",
        "owner_user_id",
        "owner_group_id",
        "user_a_id",
        "user_b_id",
        "status",
        "assignee_user_id",
        "last_message_at",
        "created_at",
    }
)


@dataclass(frozen=True)
class _Shape:
    """What a page's statement looks like, its values aside: PostgreSQL compiles one
    statement per shape, once."""

    status: bool
    assignee: str | None  # "me", "none" or "user"
    unread: bool | None
    search: str | None  # "digits", or by name: "few" or "many" (contacts hold its pieces)
    pieces: int  # of a search by name
    terms: int  # per piece, one under each key (PostgreSQL; 0: a list, on SQLite)
    resumed: bool  # from a cursor: ordered as of its snapshot, after its place
    postgresql: bool


def _param(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_)


def _piece(i: int, terms: int) -> ColumnElement[bool]:
    """The term is one of piece `i`'s: its terms under each key, `terms` parameters
    `piece_<i>_<j>` (`_spread`), or with `terms` 0 the list `piece_<i>`. As parameters,
    PostgreSQL knows how many they are (one, with one key): its plans probe a contact's
    terms by the primary key (term, contact_id) rather than reading them all."""
    if terms:
        return ContactSearchTerm.term.in_(
            [_param(f"piece_{i}_{j}", BigInteger()) for j in range(terms)]
        )
    return ContactSearchTerm.term.in_(bindparam(f"piece_{i}", expanding=True))


def _spread(values: dict[str, Any], pieces: int, terms: int) -> None:
    """Each piece's list of terms (`piece_<i>`) as the parameters `_piece` names (one
    repeated if a collision left fewer)."""
    for i in range(pieces):
        found = values[f"piece_{i}"]
        for j in range(terms):
            values[f"piece_{i}_{j}"] = found[min(j, len(found) - 1)]


# A name search whose rarest piece is held by at most this many contacts filters by their
# numbers (read once, hashed); one held by more tests each conversation's contact by index
# probes. Measured on an address book of 100,000 contacts: reading and hashing a piece's
# numbers costs ~0.35 us a holder, probing ~4 us a conversation walked, and a walk reaches
# a page of 50 after about 50 * contacts / holders conversations: the two meet near 7,000.
_FEW = 6000
# How long a piece's count is kept (`_rarity`).
_RARITY_SECONDS = 60.0


def _rarity_select(pieces: int, terms: int) -> Select[Any]:
    """How many contacts hold each piece of a search, counted up to `_FEW + 1`."""
    return select(
        *(
            select(func.count())
            .select_from(
                select(ContactSearchTerm.contact_id)
                .where(_piece(i, terms))
                .limit(literal_column(str(_FEW + 1)))
                .subquery()
            )
            .scalar_subquery()
            .label(f"n_{i}")
            for i in range(pieces)
        )
    )


def _by_rarity(values: dict[str, Any], counts: list[int]) -> str:
    """Put the rarest piece first (`piece_0`); the search's shape for that rarity."""
    order = sorted(range(len(counts)), key=counts.__getitem__)
    pieces = [values[f"piece_{i}"] for i in order]
    for i, terms in enumerate(pieces):
        values[f"piece_{i}"] = terms
    return "few" if counts[order[0]] <= _FEW else "many"


def _own_tests(shape: _Shape, user_id: Any) -> list[ColumnElement[bool]]:
    """The tests on a conversation's own columns: status and assignee."""
    tests: list[ColumnElement[bool]] = []
    if shape.status:
        tests.append(Conversation.status == _param("status"))
    if shape.assignee == "me":
        tests.append(Conversation.assignee_user_id == user_id)
    elif shape.assignee == "none":
        tests.append(Conversation.assignee_user_id.is_(None))
    elif shape.assignee == "user":
        tests.append(Conversation.assignee_user_id == _param("assignee_id", Uuid()))
    return tests


def _search_numbers(shape: _Shape) -> Select[Any]:
    """A search with few candidates (shape "few"): the numbers of the contacts holding its
    rarest piece (`piece_0`), from the terms' index alone. Terms are the organization's
    own keyed hashes, and these numbers only narrow the caller's own conversations; every
    candidate is still checked on its contact's other pieces and its decrypted name."""
    return select(ContactSearchTerm.phone_number).where(_piece(0, shape.terms))


def _holds_pieces(shape: _Shape, c: Any, first: int) -> ColumnElement[bool]:
    """Conversation `c`'s contact holds every piece of the search from `first` on (index
    probes: its contact by number, then a term per piece)."""
    return exists(
        contact_of(c)
        .with_only_columns(Contact.id)
        .where(
            contacts.holds_every(
                Contact.id, [_piece(i, shape.terms) for i in range(first, shape.pieces)]
            )
        )
        .offset(literal_column("0"))
    )


def _per_row_tests(
    shape: _Shape, c: Any, user_id: Any, numbers: Select[Any] | None = None
) -> list[ColumnElement[bool]]:
    """The tests that read other tables (unread, the search) on conversation `c` (the
    columns of a query over conversations), each a subplan run on the rows as they come,
    in order: the walk stops at the page's end. (OFFSET 0 keeps PostgreSQL from turning
    a test into a join, which it would run on every conversation.) `numbers`: those of
    `_search_numbers`, when the statement finds them once for several walks."""
    per_row: list[ColumnElement[bool]] = []
    if shape.unread is not None:
        unread = exists(
            select(Message.id)
            .where(*conversations.unread_messages(c.id, user_id))
            .offset(literal_column("0"))
        )
        per_row.append(unread if shape.unread else not_(unread))
    if shape.search == "digits":
        per_row.append(c.external_number.contains(_param("digits")))
    elif shape.search == "few":
        # Few contacts hold the rarest piece: their numbers, found once, are looked up in
        # memory for each conversation; only the conversations passing are probed for the
        # other pieces.
        if numbers is None:
            numbers = _search_numbers(shape).offset(literal_column("0"))
        # `IS TRUE` keeps the test a subplan, its numbers hashed once: as a join its
        # planner, not knowing how many there are, may compare them with every row.
        per_row.append(c.external_number.in_(numbers).is_(True))
        if shape.pieces > 1:
            per_row.append(_holds_pieces(shape, c, 1))
    elif shape.search == "many":
        # Many hold even the rarest: each conversation's contact is tested by index
        # probes, and the walk stops soon (matches are dense).
        per_row.append(_holds_pieces(shape, c, 0))
    return per_row


def _candidate_columns(sort_at: ColumnElement[datetime]) -> list[Any]:
    return [
        *(col for col in Conversation.__table__.columns if col.key in _SHOWN),
        sort_at.label("sort_at"),
    ]


def _after(sort_at: ColumnElement[datetime]) -> ColumnElement[bool]:
    """After the cursor's place (`after_at`, `after_id`) in the order of `sort_at`."""
    after_at, after_id = _param("after_at", UTCDateTime()), _param("after_id", Uuid())
    return or_(sort_at < after_at, and_(sort_at == after_at, Conversation.id < after_id))


def _page_select(shape: _Shape) -> Select[Any]:
    """One page of the inbox, its values all parameters: `user_id`, `org_id`, `limit`,
    and those its filters and cursor name. On PostgreSQL also `token_hash`: no rows
    unless that token is still valid and still the user's (the caller came from a
    per-process cache)."""
    user_id, org_id = _param("user_id", Uuid()), _param("org_id", Uuid())
    if shape.postgresql:
        candidates = _in_index_order(shape, user_id, org_id)
        per_row: list[ColumnElement[bool]] = []
    else:
        candidates = _in_one_scan(shape, user_id, org_id)
        per_row = _per_row_tests(shape, candidates.c, user_id)
    if not shape.postgresql:
        # Its columns by name (an alias of conversations could take `sort_at`, which
        # some parts read from `last_message_at`, for `last_message_at`).
        columns = [*view_columns(user_id, candidates.c), candidates.c.sort_at]
        return (
            select(*columns)
            .where(*per_row)
            .order_by(candidates.c.sort_at.desc(), candidates.c.id.desc())
            .limit(_param("limit"))
        )
    # The page first, then what it shows: its newest messages are read for the rows it
    # keeps, not for every candidate of every part (up to eight parts' worth on a resumed
    # page), and the subqueries of `view_columns` run on its rows only.
    page = (
        select(candidates)
        .order_by(candidates.c.sort_at.desc(), candidates.c.id.desc())
        .limit(_param("limit"))
        .subquery("page")
    )
    newest = (
        select(*(col.label(f"m_{col.key}") for col in RENDERED_COLUMNS))
        .where(Message.conversation_id == page.c.id)
        .order_by(Message.conversation_id.desc(), Message.id.desc())
        .limit(literal_column("1"))
        .lateral("newest")
    )
    # Uncorrelated: run once, before anything else (a false one ends the statement).
    token_valid = exists(
        token_owner(_param("token_hash")).where(User.id == user_id).offset(literal_column("0"))
    )
    contact = contact_of(page.c).lateral("contact")
    return (
        select(
            *view_columns(user_id, page.c, newest_id=False, contact=False),
            *contact.c,
            page.c.sort_at,
            newest,
        )
        .select_from(page.outerjoin(newest, true()).outerjoin(contact, true()))
        .where(token_valid)
        .order_by(page.c.sort_at.desc(), page.c.id.desc())
    )


def _in_one_scan(shape: _Shape, user_id: Any, org_id: Any) -> Subquery:
    """The caller's visible conversations that pass the tests on their own columns, in
    page order, as one query (SQLite): the per-row tests run on its rows."""
    cheap = [conversations.visible_to_user(user_id, org_id), *_own_tests(shape, user_id)]
    sort_at: ColumnElement[datetime] = Conversation.last_message_at.expression
    if shape.resumed:
        sort_at = _activity_as_of(_param("snapshot", UTCDateTime()))
        cheap.append(_after(sort_at))
    # OFFSET 0 keeps the per-row tests out of the ordering (they would run on every
    # conversation before it); without such tests the page's LIMIT goes in here.
    ordered = (
        select(*_candidate_columns(sort_at))
        .where(*cheap)
        .order_by(sort_at.desc(), Conversation.id.desc())
    )
    tested_per_row = shape.unread is not None or shape.search is not None
    return (
        ordered.offset(literal_column("0")) if tested_per_row else ordered.limit(_param("limit"))
    ).subquery("ordered")


def _part(
    shape: _Shape,
    walk_tests: list[ColumnElement[bool]],
    tests: list[ColumnElement[bool]],
    sort_at: ColumnElement[datetime],
    after: bool,
    numbers: Select[Any] | None,
) -> Select[Any]:
    """The first `limit` conversations of one part of the visibility, in page order: a
    walk of the conversations passing `walk_tests` (the index's range) in that order,
    and above it `tests` (on conversations' columns, then read from the walk's), the
    cursor's place (`after`) and the per-row tests, applied to its rows as they come.

    The walk is fenced (OFFSET 0) and the tests above it keep its order, unsorted: in
    the walk, or with an ORDER BY of their own over it, PostgreSQL could plan them for
    every row (read all, test all, sort), as it does when it guesses that few pass: the
    generic plans of prepared statements guess so from the organization's and the
    filters' tests, multiplied as if independent. Which rows the LIMIT keeps relies on
    PostgreSQL handing a subquery's rows, in its ORDER BY, to a filter and a limit above
    it as they come (its executor reorders nothing there); the page's order itself is
    the statement's own ORDER BY."""
    user_id = _param("user_id", Uuid())
    walk = (
        select(*_candidate_columns(sort_at))
        .where(*walk_tests)
        .order_by(sort_at.desc(), Conversation.id.desc())
        .offset(literal_column("0"))
        # A group's part names the group of the query around it.
        .correlate_except(Conversation)
        .lateral("walk")
    )
    w = walk.c
    above = [ClauseAdapter(walk).traverse(test) for test in tests]
    if after:
        after_at, after_id = _param("after_at", UTCDateTime()), _param("after_id", Uuid())
        above.append(tuple_(w.sort_at, w.id) < tuple_(after_at, after_id))
    return (
        select(*w)
        .where(*above, *_per_row_tests(shape, w, user_id, numbers))
        .limit(_param("limit"))
    )


def _in_index_order(shape: _Shape, user_id: Any, org_id: Any) -> Subquery:
    """The page's candidates on PostgreSQL: at most `limit` conversations from each part
    of the caller's visibility (`conversations.visible_parts`), each part read in the
    order of its (party, last_message_at) index with every test applied as it goes, so
    it stops at the page's end; the caller merges, orders and limits them.

    A resumed page orders by the activity as of the snapshot, which no index holds: each
    part is read twice, once for the conversations with no activity since the snapshot
    (their activity then is their `last_message_at`: a range of the index, from the
    cursor's place on, itself no later than the snapshot) and once for the few with
    activity since (their activity then found from their messages, `_activity_as_of`)."""
    own = _own_tests(shape, user_id)
    last_at = Conversation.last_message_at.expression
    # Per read: the order, the walk's range and whether the cursor's place is a test.
    reads: list[tuple[ColumnElement[datetime], list[ColumnElement[bool]], bool]]
    if not shape.resumed:
        reads = [(last_at, [], False)]
    else:
        snapshot = _param("snapshot", UTCDateTime())
        after_at, after_id = _param("after_at", UTCDateTime()), _param("after_id", Uuid())
        # The moved ones' range is closed (below 'infinity', which no activity reaches)
        # for the planner's sake: a prepared statement's generic plan guesses a third
        # of the rows for a range with one end a parameter, 0.5% for one with two ends;
        # guessing a third, their as-of activity computed for each of them, the generic
        # plan looked dearer than planning each time (1 to 3 ms per page).
        infinity = literal_column("'infinity'", UTCDateTime())
        # The unmoved ones' range likewise: the keyset test alone is guessed to keep a
        # third of a part, and with a filter above it guessed to pass few (status and
        # assignee "me"), the generic plan read that third of the group's conversations
        # by a bitmap and sorted it (1.7-2.2 ms for a page of 0.5). Closed below
        # '-infinity' and above by the cursor's instant (both implied by the keyset
        # test), the range is guessed small and walked on the index.
        minus_infinity = literal_column("'-infinity'", UTCDateTime())
        unmoved = [
            tuple_(last_at, Conversation.id) < tuple_(after_at, after_id),
            last_at <= after_at,
            last_at > minus_infinity,
        ]
        reads = [
            (last_at, unmoved, False),
            (_activity_as_of(snapshot), [last_at > snapshot, last_at < infinity], True),
        ]
    groups = conversations.groups_of(user_id).subquery("my_groups")
    *direct, (in_group, in_group_rest) = conversations.visible_parts(
        user_id, org_id, groups.c.group_id
    )
    # A search's numbers, found once (a CTE) for every walk.
    numbers = None
    if shape.search == "few":
        found = _search_numbers(shape).cte("search_numbers")
        numbers = select(found.c.phone_number)
    branches: list[Select[Any]] = []
    for sort_at, walk_range, after in reads:
        branches += [
            _part(shape, [lead, *walk_range], [*rest, *own], sort_at, after, numbers)
            for lead, rest in direct
        ]
        per_group = _part(
            shape, [in_group, *walk_range], [*in_group_rest, *own], sort_at, after, numbers
        ).lateral("in_group")
        branches.append(select(*per_group.c).select_from(groups.join(per_group, true())))
    return union_all(*branches).subquery("ordered")


class _PageRecord(asyncpg.Record):  # type: ignore[misc]
    """A page row as the driver gives it: the conversation's values by key, and its newest
    message by attribute, as `render_message` reads a message (from the `m_` columns)."""


for _column in RENDERED_COLUMNS:
    setattr(_PageRecord, _column.key, property(operator.itemgetter(f"m_{_column.key}")))

_STATEMENTS: dict[_Shape, DriverStatement] = {}
_USER_BY_NAME = DriverStatement(
    select(User.id).where(User.org_id == bindparam("org_id"), User.username == bindparam("name"))
)


_RARITY: dict[tuple[int, int], DriverStatement] = {}


def _rarity_statement(pieces: int, terms: int) -> DriverStatement:
    found = _RARITY.get((pieces, terms))
    if found is None:
        found = _RARITY[pieces, terms] = DriverStatement(_rarity_select(pieces, terms))
    return found


def _statement(shape: _Shape) -> DriverStatement:
    found = _STATEMENTS.get(shape)
    if found is None:
        found = _STATEMENTS[shape] = DriverStatement(_page_select(shape))
    return found


def _unknown_assignee(name: str) -> Invalid:
    return Invalid(
        f"There is no user '{name}' in this organization.",
        code="invalid_assignee",
        details=[{"field": "assignee", "value": name}],
    )


def _values(
    ctx: AppContext,
    principal: Principal,
    filters: InboxFilter,
    search: Search | None,
    position: _Position | None,
) -> dict[str, Any]:
    values: dict[str, Any] = {"user_id": principal.user_id, "org_id": principal.org_id}
    if filters.status is not None:
        values["status"] = filters.status
    if search is not None and search.digits:
        values["digits"] = search.digits
    elif search is not None:
        for i, terms in enumerate(search.terms_by_piece(ctx.keyring, principal.org_id)):
            values[f"piece_{i}"] = terms
    if position is not None:
        values["snapshot"] = position.snapshot
    return values


def _shape(
    filters: InboxFilter,
    search: Search | None,
    position: _Position | None,
    postgresql: bool,
    keys: int,
) -> _Shape:
    assignee = filters.assignee
    by_name = search is not None and not search.digits
    return _Shape(
        status=filters.status is not None,
        assignee=assignee if assignee in (None, "me", "none") else "user",
        unread=filters.unread,
        search=None if search is None else "digits" if search.digits else "many",
        pieces=len(search.lookup_pieces()) if search is not None and by_name else 0,
        terms=keys if by_name and postgresql else 0,
        resumed=position is not None,
        postgresql=postgresql,
    )


Fetch = Callable[
    [tuple[datetime, uuid.UUID] | None, int], Awaitable[list[tuple[ConversationView, datetime]]]
]


async def list_inbox(
    ctx: AppContext,
    token: str,
    filters: InboxFilter,
    limit: int,
    cursor: str | None,
) -> tuple[list[ConversationView], str | None]:
    """One page of the caller's inbox, and the cursor of the next."""
    position = _decode_cursor(cursor) if cursor else None
    search = parse_search(filters.q) if filters.q else None
    postgresql = ctx.engine.dialect.name == "postgresql"
    shape = _shape(filters, search, position, postgresql, len(ctx.keyring.key_ids))
    started = utcnow()
    if postgresql:
        found = await _on_postgresql(ctx, token, filters, search, position, shape, limit)
    else:
        found = await _in_steps(ctx, token, filters, search, position, shape, limit)
    page = [view for view, _ in found[:limit]]
    if len(found) <= limit or not page:
        return page, None
    snapshot = position.snapshot if position else None
    if snapshot is None:
        # The first page: the snapshot is its moment, or its newest activity if that is
        # later (a clock ahead), so that everything it showed keeps its place.
        snapshot = max(started, found[0][1])
    last_view, last_at = found[limit - 1]
    return page, _encode_cursor(_Position(snapshot, last_at, last_view.id))


async def _fill(
    fetch: Fetch, search: Search | None, position: _Position | None, limit: int
) -> list[tuple[ConversationView, datetime]]:
    """Up to `limit + 1` conversations from `position` on. A name search's candidates are
    checked on their decrypted names; a page left short by candidates turned down is
    filled from the next ones."""
    found: list[tuple[ConversationView, datetime]] = []
    after = (position.sort_at, position.conversation_id) if position else None
    batch = limit + 1
    while len(found) <= limit:
        rows = await fetch(after, batch)
        for view, sort_at in rows:
            after = (sort_at, view.id)
            if search is None or search.matches(view.contact_name, view.external_number):
                found.append((view, sort_at))
                if len(found) > limit:
                    break
        if len(rows) < batch:
            break
    return found


async def _on_postgresql(
    ctx: AppContext,
    token: str,
    filters: InboxFilter,
    search: Search | None,
    position: _Position | None,
    shape: _Shape,
    limit: int,
) -> list[tuple[ConversationView, datetime]]:
    # The caller from the per-process cache sends use (by token hash); the page's own
    # statement checks that the token is still valid, so a page with rows needs no other
    # round trip, and one without asks again whether the token is (`_still_valid`) if
    # the caller came from the cache.
    digest = hash_token(token)
    cached = ctx.senders.get(digest)
    # Only a kept caller can be stale: one read now is not read again.
    kept = cached is not None
    if cached is None:
        cached = await send_store.load_sender(ctx, digest)
    # (No valid token: `principal_of` says so.)
    principal = principal_of(digest, None) if cached is None else cached.principal
    async with driver_connection(ctx.engine) as conn:
        values = _values(ctx, principal, filters, search, position)
        values["token_hash"] = digest
        if shape.assignee == "user":
            assert filters.assignee is not None
            values["assignee_id"] = await conn.fetchval(
                _USER_BY_NAME.sql,
                *_USER_BY_NAME.args(org_id=principal.org_id, name=filters.assignee),
            )
            if values["assignee_id"] is None:
                if kept:
                    await _still_valid(ctx, digest)
                raise _unknown_assignee(filters.assignee)
        if shape.search == "many":
            counts = await _rarity(ctx, conn, values, shape)
            shape = replace(shape, search=_by_rarity(values, counts))
            _spread(values, shape.pieces, shape.terms)
        statement = _statement(shape)
        # The request's first read starts here (from its cursor's place, if any).
        start = (position.sort_at, position.conversation_id) if position else None

        async def fetch(
            after: tuple[datetime, uuid.UUID] | None, batch: int
        ) -> list[tuple[ConversationView, datetime]]:
            args = statement.args(
                **values,
                **({"after_at": after[0], "after_id": after[1]} if after else {}),
                limit=batch,
            )
            rows = await conn.fetch(statement.sql, *args, record_class=_PageRecord)
            if not rows and after == start and kept:
                await _still_valid(ctx, digest)
            return [
                (
                    make_view(
                        ctx.keyring,
                        row,
                        render_message(ctx.keyring, row) if row["m_id"] is not None else None,
                    ),
                    row["sort_at"],
                )
                for row in rows
            ]

        return await _fill(fetch, search, position, limit)


async def _still_valid(ctx: AppContext, digest: str) -> None:
    """Raise Unauthorized unless the token is valid now (read afresh, and the cache
    updated): before an answer that could come of a stale cached caller."""
    if await send_store.load_sender(ctx, digest) is None:
        principal_of(digest, None)


async def _rarity(
    ctx: AppContext, conn: asyncpg.Connection, values: dict[str, Any], shape: _Shape
) -> list[int]:
    """How many contacts hold each piece of a name search (`piece_<i>`), capped: counted
    for the pieces not counted in the last `_RARITY_SECONDS`. The counts only pick the
    search's plan (a count a minute old picks as well as a fresh one); the matches are
    always read now."""
    now = time.monotonic()
    pieces = [tuple(values[f"piece_{i}"]) for i in range(shape.pieces)]
    counts: dict[int, int] = {}
    for i, piece in enumerate(pieces):
        kept = ctx.search_rarity.get(piece)
        if kept is not None and kept[0] > now:
            counts[i] = kept[1]
    missing = [i for i in range(len(pieces)) if i not in counts]
    if missing:
        asked = {f"piece_{j}": values[f"piece_{i}"] for j, i in enumerate(missing)}
        _spread(asked, len(missing), shape.terms)
        rarity = _rarity_statement(len(missing), shape.terms)
        found = await conn.fetchrow(rarity.sql, *rarity.args(**asked))
        for j, i in enumerate(missing):
            counts[i] = found[j]
            ctx.search_rarity.put(pieces[i], (now + _RARITY_SECONDS, found[j]))
    return [counts[i] for i in range(len(pieces))]


async def _in_steps(
    ctx: AppContext,
    token: str,
    filters: InboxFilter,
    search: Search | None,
    position: _Position | None,
    shape: _Shape,
    limit: int,
) -> list[tuple[ConversationView, datetime]]:
    async with ctx.sessionmaker() as session:
        principal = await authenticate_user(session, token)
        values = _values(ctx, principal, filters, search, position)
        if shape.assignee == "user":
            assert filters.assignee is not None
            values["assignee_id"] = await session.scalar(
                select(User.id).where(
                    User.org_id == principal.org_id, User.username == filters.assignee
                )
            )
            if values["assignee_id"] is None:
                raise _unknown_assignee(filters.assignee)
        if shape.search == "many":
            counts = (await session.execute(_rarity_select(shape.pieces, 0), values)).one()
            shape = replace(shape, search=_by_rarity(values, list(counts)))
        stmt = _page_select(shape)

        async def fetch(
            after: tuple[datetime, uuid.UUID] | None, batch: int
        ) -> list[tuple[ConversationView, datetime]]:
            params = {
                **values,
                **({"after_at": after[0], "after_id": after[1]} if after else {}),
                "limit": batch,
            }
            rows = (await session.execute(stmt, params)).all()
            views = await build_views(ctx.keyring, session, rows)
            return [(view, row.sort_at) for view, row in zip(views, rows, strict=True)]

        return await _fill(fetch, search, position, limit)
