"""The shared inbox in the benchmark: its data (a group's conversations with statuses,
assignees, read markers and notes; an address book of encrypted names with their search
terms) and its requests (`GET /v1/conversations` with filters, as the inbox user)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from app.crypto import Keyring
from app.ids import new_id
from app.services.contact_search import contact_terms
from app.services.sealing import seal_body, seal_contact_name
from app.services.segments import count_segments
from bench import dataset
from bench.dataset import Size
from bench.loadgen import raw_request

MEMBERS = 5  # the group's members: the inbox user and four colleagues
INBOX_EXTENSION = "9000"
# Name parts and digits the requests search for.
SEARCH_WORDS = ("mar", "gonz", "lee", "pat", "chen", "ana", "jo", "will", "garc", "smi", "o")
SEARCH_DIGITS = ("555", "0142", "5550117", "2125")


async def _copy(conn: asyncpg.Connection, table: str, columns: tuple[str, ...], rows: Any) -> None:
    await conn.copy_records_to_table(table, records=rows, columns=columns)


async def seed_inbox(
    conn: asyncpg.Connection,
    size: Size,
    keyring: Keyring,
    users: list[dict[str, Any]],
    now: datetime,
    rng: random.Random,
    log: Callable[[str], None],
    message_columns: tuple[str, ...],
) -> dict[str, Any]:
    """Seed the inbox into the template (COPY, triggers off); returns its part of the meta.
    `message_columns`: the order of the messages' COPY columns."""
    org_index = 1 % size.orgs
    members = [u for u in users if dataset.org_of_user(size, u["index"]) == org_index][:MEMBERS]
    org = members[0]["org_uuid"]
    line = members[0]["numbers"][1]
    group = new_id()
    await _copy(
        conn,
        "groups",
        ("id", "org_id", "name", "outbound_sms_number", "deleted_at", "created_at", "updated_at"),
        [(group, org, "Inbox Desk", None, None, now, now)],
    )
    await _copy(
        conn,
        "extensions",
        ("org_id", "extension", "user_id", "group_id"),
        [(org, INBOX_EXTENSION, None, group)],
    )
    await _copy(
        conn,
        "group_members",
        ("group_id", "user_id", "org_id", "username"),
        [(group, m["uuid"], org, m["username"]) for m in members],
    )

    # Conversations: three messages each (the patient, a reply, the patient again), a note
    # in one in ten; last activity spread over 90 days.
    patients = rng.sample(dataset.external_pool(size), size.inbox_conversations)
    convs: list[dict[str, Any]] = []
    planned: list[tuple[datetime, int, str]] = []  # (at, conversation, kind)
    for c, patient in enumerate(patients):
        start = now - timedelta(seconds=rng.uniform(600, 90 * 86400))
        kinds = ["inbound", "outbound", "inbound"] + (["note"] if rng.random() < 0.1 else [])
        for k, kind in enumerate(kinds):
            planned.append((start + timedelta(minutes=3 * k), c, kind))
        roll = rng.random()
        convs.append(
            {
                "id": new_id(),
                "patient": patient,
                "first": start,
                "last": start + timedelta(minutes=3 * (len(kinds) - 1)),
                "status": "closed" if rng.random() < 0.25 else "open",
                "assignee": (
                    members[0]["uuid"]
                    if roll < 0.2
                    else rng.choice(members[1:])["uuid"]
                    if roll < 0.5
                    else None
                ),
                "read": rng.random() < 0.85,
            }
        )
    # Ids in time order, as the app makes them.
    planned.sort(key=lambda p: p[0])
    texts = dataset.TEXTS
    rows = []
    newest: dict[int, uuid.UUID] = {}
    for at, c, kind in planned:
        mid = new_id()
        newest[c] = mid
        conv = convs[c]
        text = texts[rng.randrange(len(texts))]
        info = count_segments(text)
        author = rng.choice(members)
        inbound = kind == "inbound"
        rows.append(
            (
                mid,
                org,
                conv["id"],
                kind,
                None if inbound else author["uuid"],
                None if inbound else author["username"],
                None,
                group,
                None if kind == "note" else conv["patient"] if inbound else line,
                None if kind == "note" else line if inbound else conv["patient"],
                seal_body(keyring, mid, org, text),
                "received" if inbound else "delivered",
                False,
                '{"sent": false, "reason": "group_recipient"}' if inbound else None,
                info.segments,
                info.encoding,
                0,
                None,
                None,
                None if kind == "note" else "telnyx" if inbound else "simulator",
                None if kind == "note" else str(uuid.uuid4()),
                at,
                at,
            )
        )
    await _copy(
        conn,
        "conversations",
        (
            "id",
            "org_id",
            "kind",
            "key",
            "owner_user_id",
            "owner_group_id",
            "external_number",
            "user_a_id",
            "user_b_id",
            "last_inbound_to_number",
            "last_message_at",
            "created_at",
            "status",
            "assignee_user_id",
        ),
        [
            (
                cv["id"],
                org,
                "sms",
                f"g:{group}:{cv['patient']}",
                None,
                group,
                cv["patient"],
                None,
                None,
                line,
                cv["last"],
                cv["first"],
                cv["status"],
                cv["assignee"],
            )
            for cv in convs
        ],
    )
    await _copy(conn, "messages", message_columns, rows)
    await _copy(
        conn,
        "conversation_reads",
        ("conversation_id", "user_id", "last_read_message_id", "updated_at"),
        [(cv["id"], members[0]["uuid"], newest[c], now) for c, cv in enumerate(convs) if cv["read"]],
    )

    # The address book: four in five of the inbox's patients, then other numbers.
    key_id = keyring.primary_key_id
    numbers = patients[: size.inbox_conversations * 4 // 5]
    numbers += [dataset.address_book_number(k) for k in range(size.contacts - len(numbers))]
    contacts = []
    terms = []
    for number in numbers:
        cid = new_id()
        name = dataset.contact_name(rng)
        contacts.append((cid, org, number, seal_contact_name(keyring, cid, org, name), now, now))
        terms += [(t, cid, number) for t in contact_terms(keyring, key_id, org, name, number)]
    await _copy(
        conn,
        "contacts",
        ("id", "org_id", "phone_number", "name_ciphertext", "created_at", "updated_at"),
        contacts,
    )
    # The terms' indexes are built once, after the copy.
    await conn.execute("ALTER TABLE contact_search_terms DROP CONSTRAINT pk_contact_search_terms")
    await conn.execute("DROP INDEX ix_contact_search_terms_contact_id")
    await _copy(conn, "contact_search_terms", ("term", "contact_id", "phone_number"), terms)
    await conn.execute(
        "ALTER TABLE contact_search_terms ADD CONSTRAINT pk_contact_search_terms "
        "PRIMARY KEY (term, contact_id) INCLUDE (phone_number)"
    )
    await conn.execute(
        "CREATE INDEX ix_contact_search_terms_contact_id ON contact_search_terms (contact_id)"
    )
    log(
        f"seed: inbox of {len(convs)} conversations ({len(rows)} messages), "
        f"{len(contacts)} contacts with {len(terms)} search terms"
    )
    return {
        "inbox_user": members[0]["index"],
        "inbox_group_id": str(group),
        "inbox_conversations": len(convs),
        "inbox_messages": len(rows),
        "contacts": len(contacts),
        "contact_search_terms": len(terms),
    }


# ---------------------------------------------------------------------------------
# Requests

# The inbox views a front desk uses, with how often each is asked for.
FILTERS: tuple[tuple[float, Callable[[random.Random], dict[str, str]]], ...] = (
    (0.30, lambda rng: {}),
    (0.20, lambda rng: {"status": "open"}),
    (0.15, lambda rng: {"status": "open", "assignee": "me"}),
    (0.10, lambda rng: {"status": "open", "assignee": "none"}),
    (0.10, lambda rng: {"unread": "true"}),
    (0.10, lambda rng: {"q": rng.choice(SEARCH_WORDS)}),
    (0.05, lambda rng: {"q": rng.choice(SEARCH_DIGITS)}),
)


def pick_filter(rng: random.Random) -> dict[str, str]:
    roll = rng.random()
    for weight, make in FILTERS:
        if roll < weight:
            return make(rng)
        roll -= weight
    return {}


def inbox_path(params: dict[str, str]) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"limit": "50", **params}.items())
    return f"/v1/conversations?{query}"


def inbox_requests(
    token: str, count: int, seed: int, next_pages: list[dict[str, str]]
) -> list[bytes]:
    """`GET /v1/conversations?limit=50` with the filters above; one in ten a next page
    (`next_pages`: filters with a cursor, fetched from the running app)."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    out = []
    for _ in range(count):
        params = (
            rng.choice(next_pages) if next_pages and rng.random() < 0.1 else pick_filter(rng)
        )
        out.append(raw_request("GET", inbox_path(params), headers))
    return out


def first_pages() -> list[dict[str, str]]:
    """Every filter of the mix once, for collecting next-page cursors."""
    return [
        {},
        {"status": "open"},
        {"status": "open", "assignee": "me"},
        {"status": "open", "assignee": "none"},
        {"unread": "true"},
        *({"q": w} for w in SEARCH_WORDS[:4]),
    ]


def cursor_of(body: bytes) -> str | None:
    value = orjson.loads(body).get("next_cursor")
    return value if isinstance(value, str) else None
