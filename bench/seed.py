"""The seeded data set: organizations, users, numbers, tokens, conversations, messages.

Seeded once into a template database `msg_bench_seed_v<SEED_VERSION>_<size>` with
COPY (bodies sealed with the app's own `seal_body`, ids from `app.ids.new_id`), then
kept: every run gets a fresh copy of it (`CREATE DATABASE ... TEMPLATE`), so its
writes never leak into the next run. The template is seeded again when the seed
version, the size or the migration head changes, or when an earlier seeding did not
finish.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
import uuid
from array import array
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from app.crypto import Keyring, generate_key_setting
from app.ids import new_id
from app.security import hash_token, new_token
from app.services.sealing import seal_auto_reply, seal_body
from app.services.segments import count_segments
from bench import dataset, inbox
from bench.dataset import Size

PG_BASE = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
COPY_BATCH = 50_000
Log = Callable[[str], None]


def dsn(database: str) -> str:
    return f"{PG_BASE}/{database}"


def sqlalchemy_url(database: str) -> str:
    return dsn(database).replace("postgresql://", "postgresql+asyncpg://", 1)


def template_name(size: Size) -> str:
    return f"msg_bench_seed_v{dataset.SEED_VERSION}_{size.name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(dsn("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(dsn("postgres"))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migration_head() -> str:
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()
    return str(head)


async def load_meta(database: str) -> dict[str, Any] | None:
    """The seed's description (keys, tokens, counts), or None if the seeding is incomplete."""
    conn = await asyncpg.connect(dsn(database))
    try:
        if not await conn.fetchval("SELECT to_regclass('bench_meta') IS NOT NULL"):
            return None
        raw = await conn.fetchval("SELECT value FROM bench_meta WHERE key = 'seed'")
    finally:
        await conn.close()
    return None if raw is None else orjson.loads(raw)


async def ensure_template(size: Size, log: Log) -> tuple[str, dict[str, Any], float | None]:
    """The seeded template database, its meta, and the seconds seeding took (None: cached)."""
    name = template_name(size)
    if await database_exists(name):
        meta = await load_meta(name)
        if (
            meta is not None
            and meta.get("version") == dataset.SEED_VERSION
            and meta.get("size") == size.name
            and meta.get("alembic_head") == migration_head()
        ):
            log(f"seed: cached database {name} (seeded in {meta['seconds']:.0f} s)")
            return name, meta, None
        log(f"seed: {name} is stale or incomplete; seeding it again")
        await drop_database(name)
    started = time.perf_counter()
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        from app.migrate import upgrade_to_head

        await upgrade_to_head(sqlalchemy_url(name))
        meta = await _seed(name, size, log)
    except BaseException:
        await drop_database(name)
        raise
    seconds = time.perf_counter() - started
    meta["seconds"] = seconds
    conn = await asyncpg.connect(dsn(name))
    try:
        await conn.execute(
            "INSERT INTO bench_meta (key, value) VALUES ('seed', $1)", orjson.dumps(meta).decode()
        )
    finally:
        await conn.close()
    log(f"seed: seeded {name} in {seconds:.1f} s")
    return name, meta, seconds


async def create_run_database(template: str, name: str) -> None:
    """A fresh database for one run: a file copy of the seeded template."""
    await drop_database(name)
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')


# ---------------------------------------------------------------------------------
# Seeding

MESSAGE_COLUMNS = (
    "id",
    "org_id",
    "conversation_id",
    "direction",
    "sender_user_id",
    "sender_username",
    "recipient_username",
    "group_id",
    "from_number",
    "to_number",
    "body_ciphertext",
    "status",
    "auto_reply",
    "auto_reply_decision",
    "segments",
    "encoding",
    "media_dropped",
    "error_code",
    "error_message",
    "carrier",
    "carrier_message_id",
    "created_at",
    "updated_at",
)

# Per-message flags decided by the parent, so that the conversation summaries it
# writes agree with the messages the child processes write.
INBOUND = 1
SECOND_NUMBER = 2

# Filled by the parent before forking the COPY processes (inherited, never pickled).
_SHARED: dict[str, Any] = {}


def _message_rows(start: int, stop: int) -> list[tuple[Any, ...]]:
    s = _SHARED
    keyring: Keyring = s["keyring"]
    ids: bytes = s["ids"]
    conv_idx: array[int] = s["conv_idx"]
    flags: bytearray = s["flags"]
    text_idx: bytearray = s["text_idx"]
    convs: list[tuple[uuid.UUID, uuid.UUID, int, str]] = s["convs"]
    users: list[dict[str, Any]] = s["users"]
    segs: list[tuple[int, str]] = s["segments"]
    t0: datetime = s["t0"]
    step: float = s["step"]
    rows = []
    for p in range(start, stop):
        mid = uuid.UUID(bytes=ids[16 * p : 16 * p + 16])
        conv_id, org_id, owner, external = convs[conv_idx[p]]
        user = users[owner]
        text = dataset.TEXTS[text_idx[p]]
        segments, encoding = segs[text_idx[p]]
        at = t0 + timedelta(seconds=p * step)
        body = seal_body(keyring, mid, org_id, text)
        if flags[p] & INBOUND:
            own = user["numbers"][1 if flags[p] & SECOND_NUMBER else 0]
            rows.append(
                (
                    mid,
                    org_id,
                    conv_id,
                    "inbound",
                    None,
                    None,
                    user["username"],
                    None,
                    external,
                    own,
                    body,
                    "received",
                    False,
                    user["decision"],
                    segments,
                    encoding,
                    0,
                    None,
                    None,
                    "telnyx",
                    str(uuid.uuid4()),
                    at,
                    at,
                )
            )
        else:
            rows.append(
                (
                    mid,
                    org_id,
                    conv_id,
                    "outbound",
                    user["uuid"],
                    user["username"],
                    None,
                    None,
                    user["numbers"][0],
                    external,
                    body,
                    "delivered",
                    False,
                    None,
                    segments,
                    encoding,
                    0,
                    None,
                    None,
                    "simulator",
                    f"sim-{uuid.uuid4()}",
                    at,
                    at,
                )
            )
    return rows


async def _copy_part(database: str, part: int, parts: int, total: int) -> None:
    conn = await asyncpg.connect(dsn(database))
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET synchronous_commit = off")
        for start in range(part * COPY_BATCH, total, parts * COPY_BATCH):
            rows = _message_rows(start, min(total, start + COPY_BATCH))
            await conn.copy_records_to_table("messages", records=rows, columns=MESSAGE_COLUMNS)
    finally:
        await conn.close()


def _copy_process(database: str, part: int, parts: int, total: int) -> None:
    asyncio.run(_copy_part(database, part, parts, total))


async def _seed(database: str, size: Size, log: Log) -> dict[str, Any]:
    rng = random.Random(20261125)
    key_setting = generate_key_setting("bench1")
    keyring = Keyring.from_setting(key_setting)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn(database))
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("CREATE TABLE bench_meta (key text PRIMARY KEY, value jsonb NOT NULL)")

        orgs = [new_id() for _ in range(size.orgs)]
        await conn.copy_records_to_table(
            "organizations",
            records=[(o, f"Bench Clinic {k}", None, now) for k, o in enumerate(orgs)],
            columns=("id", "name", "help_text", "created_at"),
        )

        users: list[dict[str, Any]] = []
        for i in range(size.users):
            org = orgs[dataset.org_of_user(size, i)]
            uid = new_id()
            enabled = dataset.auto_reply_enabled(i)
            users.append(
                {
                    "index": i,
                    "uuid": uid,
                    "id": str(uid),
                    "org_uuid": org,
                    "org_id": str(org),
                    "username": f"user{i:04d}",
                    "extension": dataset.extension_of_user(size, i),
                    "numbers": list(dataset.user_numbers(i)),
                    "auto_reply": enabled,
                    "token": new_token(),
                    "decision": orjson.dumps(
                        {"sent": False, "reason": "rate_limited" if enabled else "disabled"}
                    ).decode(),
                }
            )
        # The first user of each organization is its admin.
        admins = {
            i
            for i in range(size.users)
            if i == 0 or dataset.org_of_user(size, i) != dataset.org_of_user(size, i - 1)
        }
        await conn.copy_records_to_table(
            "phone_numbers",
            records=[
                (new_id(), u["org_uuid"], n, u["extension"], now, now)
                for u in users
                for n in u["numbers"]
            ],
            columns=("id", "org_id", "number", "sms_extension", "created_at", "updated_at"),
        )
        await conn.copy_records_to_table(
            "users",
            records=[
                (
                    u["uuid"],
                    u["org_uuid"],
                    u["username"],
                    f"Staff {u['index']}",
                    "admin" if u["index"] in admins else "member",
                    True,
                    u["numbers"][0],
                    u["auto_reply"],
                    seal_auto_reply(keyring, u["uuid"], dataset.AUTO_REPLY_TEXT),
                    None,
                    now,
                    now,
                )
                for u in users
            ],
            columns=(
                "id",
                "org_id",
                "username",
                "display_name",
                "role",
                "sms_enabled",
                "outbound_sms_number",
                "auto_reply_enabled",
                "auto_reply_ciphertext",
                "deactivated_at",
                "created_at",
                "updated_at",
            ),
        )
        await conn.copy_records_to_table(
            "extensions",
            records=[(u["org_uuid"], u["extension"], u["uuid"], None) for u in users],
            columns=("org_id", "extension", "user_id", "group_id"),
        )
        await conn.copy_records_to_table(
            "api_tokens",
            records=[
                (new_id(), u["org_uuid"], u["uuid"], hash_token(u["token"]), "bench", now, None)
                for u in users
            ],
            columns=("id", "org_id", "user_id", "token_hash", "name", "created_at", "revoked_at"),
        )

        # Conversations: user 0's first one is the hot one.
        pool = dataset.external_pool(size)
        convs: list[tuple[uuid.UUID, uuid.UUID, int, str]] = []
        for u in users:
            for ext in rng.sample(pool, size.conversations_per_user):
                convs.append((new_id(), u["org_uuid"], u["index"], ext))
        hot = 0
        log(f"seed: {len(users)} users, {len(convs)} conversations; placing messages")

        # Which conversation each message is in: every conversation gets one, the hot
        # one `hot_messages`, the rest spread with a long tail (some chatty patients).
        total = size.messages
        rest = total - size.hot_messages - (len(convs) - 1)
        weights = [rng.paretovariate(1.5) for _ in range(len(convs) - 1)]
        placed = [hot] * size.hot_messages + list(range(1, len(convs)))
        placed += [c + 1 for c in rng.choices(range(len(convs) - 1), weights=weights, k=rest)]
        rng.shuffle(placed)
        conv_idx = array("i", placed)
        del placed
        flags = bytearray(
            (INBOUND if rng.random() < 0.55 else 0) | (SECOND_NUMBER if rng.random() < 0.2 else 0)
            for _ in range(total)
        )
        text_idx = bytearray(rng.randrange(len(dataset.TEXTS)) for _ in range(total))
        t0 = now - timedelta(days=365)
        step = 365 * 86400 / total

        first_at: dict[int, int] = {}
        last_at = [0] * len(convs)
        last_in_to: list[str | None] = [None] * len(convs)
        for p in range(total):
            c = conv_idx[p]
            first_at.setdefault(c, p)
            last_at[c] = p
            if flags[p] & INBOUND:
                numbers = users[convs[c][2]]["numbers"]
                last_in_to[c] = numbers[1 if flags[p] & SECOND_NUMBER else 0]
        await conn.copy_records_to_table(
            "conversations",
            records=[
                (
                    cid,
                    org,
                    "sms",
                    f"u:{users[owner]['uuid']}:{ext}",
                    users[owner]["uuid"],
                    None,
                    ext,
                    None,
                    None,
                    last_in_to[c],
                    t0 + timedelta(seconds=last_at[c] * step),
                    t0 + timedelta(seconds=first_at[c] * step),
                )
                for c, (cid, org, owner, ext) in enumerate(convs)
            ],
            columns=(
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
            ),
        )

        # Messages: ids made here in order, so id order is time order; sealing and
        # COPY in one process per core; secondary indexes built once at the end.
        started = time.perf_counter()
        ids = b"".join(new_id().bytes for _ in range(total))
        indexes = await conn.fetch(
            """SELECT indexname, indexdef FROM pg_indexes
               WHERE tablename = 'messages' AND indexname NOT IN
                 (SELECT conname FROM pg_constraint WHERE conrelid = 'messages'::regclass)"""
        )
        uniques = await conn.fetch(
            """SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
               WHERE conrelid = 'messages'::regclass AND contype = 'u'"""
        )
        for row in indexes:
            await conn.execute(f'DROP INDEX "{row["indexname"]}"')
        for row in uniques:
            await conn.execute(f'ALTER TABLE messages DROP CONSTRAINT "{row["conname"]}"')
        _SHARED.update(
            keyring=keyring,
            ids=ids,
            conv_idx=conv_idx,
            flags=flags,
            text_idx=text_idx,
            convs=convs,
            users=users,
            segments=[
                (info.segments, info.encoding) for info in map(count_segments, dataset.TEXTS)
            ],
            t0=t0,
            step=step,
        )
        parts = max(1, min(4, os.cpu_count() or 1))
        mp = multiprocessing.get_context("fork")
        procs = [
            mp.Process(target=_copy_process, args=(database, k, parts, total)) for k in range(parts)
        ]
        for proc in procs:
            proc.start()
        while any(proc.is_alive() for proc in procs):
            await asyncio.sleep(0.2)
        _SHARED.clear()
        if any(proc.exitcode != 0 for proc in procs):
            raise RuntimeError("a COPY process failed")
        log(f"seed: {total} messages copied in {time.perf_counter() - started:.1f} s")
        inbox_meta = await inbox.seed_inbox(
            conn, size, keyring, users, now, rng, log, MESSAGE_COLUMNS
        )
        log("seed: indexing")
        started = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for row in uniques:
            await conn.execute(
                f'ALTER TABLE messages ADD CONSTRAINT "{row["conname"]}" {row["def"]}'
            )
        for row in indexes:
            await conn.execute(row["indexdef"])
        await conn.execute("VACUUM (ANALYZE)")
        log(f"seed: indexed and analysed in {time.perf_counter() - started:.1f} s")
        count = await conn.fetchval("SELECT count(*) FROM messages")
        if count != total + inbox_meta["inbox_messages"]:
            raise RuntimeError(f"seeded {count} messages, expected {total} and the inbox's")
    finally:
        await conn.close()
    return {
        "version": dataset.SEED_VERSION,
        "size": size.name,
        "alembic_head": migration_head(),
        "encryption_keys": key_setting,
        "hot_conversation_id": str(convs[hot][0]),
        "hot_owner": convs[hot][2],
        "counts": {
            "organizations": len(orgs),
            "users": len(users),
            "phone_numbers": 2 * len(users),
            "conversations": len(convs),
            "messages": total,
            "hot_conversation_messages": size.hot_messages,
            **{k: v for k, v in inbox_meta.items() if isinstance(v, int) and k != "inbox_user"},
        },
        "inbox_user": inbox_meta["inbox_user"],
        "users": [
            {
                k: u[k]
                for k in ("id", "org_id", "username", "extension", "numbers", "auto_reply", "token")
            }
            for u in users
        ],
    }
