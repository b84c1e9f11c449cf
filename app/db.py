"""Engine, sessions, and the few statements that differ between PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import JSON, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.dml import Insert
from sqlalchemy.util.concurrency import greenlet_spawn

from app.errors import Conflict
from app.settings import Settings

T = TypeVar("T")

log = logging.getLogger(__name__)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# JSON columns read and written with orjson, as the API renders them.
_JSON: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite database URL; None for anything else (or in memory)."""
    if not database_url.startswith("sqlite") or ":///" not in database_url:
        return None
    name = database_url.split(":///", 1)[1].split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def make_sqlite_file_private(path: Path, data_dir: Path | None = None) -> None:
    """Create the SQLite file readable by its owner only (0600), or tighten it, before
    SQLite opens it; `data_dir`, the service's own directory, becomes 0700.

    SQLite creates the `-wal` and `-shm` files with the database file's permissions,
    so they follow; leftovers of an earlier run are tightened here too.
    """
    if data_dir is not None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _tighten(data_dir, 0o700)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():
            _tighten(file, 0o600)


def _tighten(path: Path, mode: int) -> None:
    # Another user's file cannot be changed: say so rather than refuse to start.
    try:
        path.chmod(mode)
    except PermissionError as exc:
        log.warning("Could not make %s private (chmod %o): %s", path, mode, exc)


# asyncpg prepares a statement once per connection and keeps it (PostgreSQL then plans it
# once, generically, after five runs), unless its SQL is longer than this: such a
# statement is parsed and planned again at every run. Its default, 15 KB, is shorter than
# the inbox's page statements (`services.inbox`: up to about 25 KB).
CACHEABLE_STATEMENT_BYTES = 64 * 1024
# And each prepared statement keeps its one generic plan (`plan_cache_mode`). Left to
# choose, PostgreSQL plans a statement's first five runs for their values, then keeps the
# generic plan only if its estimated cost is no worse; where the estimates say otherwise it
# plans every run again. For the delivery receipt's statement that made a receipt cost
# 0.73 ms instead of 0.16 (timed both ways on one database), and which way it went changed
# from run to run with the statistics (the benchmark's deliveries: 1,600 messages a
# second, or 450). The
# service's statements are written for generic plans (keys and indexes, no value that
# decides a plan: see `services.inbox`).


def create_engine(settings: Settings) -> AsyncEngine:
    """An async engine for the configured database, tuned for each dialect."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            make_sqlite_file_private(path, settings.data_dir)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **_JSON)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    timeout = settings.database_timeout_seconds
    engine = create_async_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_pre_ping=settings.database_pre_ping,
        pool_recycle=1800,
        # A database that stops answering must not hold a request (or the pool) for
        # minutes: connecting, each statement and waiting for a pooled connection are
        # all bounded; the server gives up on a statement at the same bound.
        pool_timeout=timeout,
        connect_args={
            "timeout": timeout,
            "command_timeout": timeout,
            "max_cacheable_statement_size": CACHEABLE_STATEMENT_BYTES,
            "server_settings": {
                "statement_timeout": str(int(timeout * 1000)),
                "plan_cache_mode": "force_generic_plan",
            },
        },
        **_JSON,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _keepalive(dbapi_conn: Any, _record: Any) -> None:
        _enable_keepalive(dbapi_conn.driver_connection)

    @event.listens_for(engine.sync_engine, "handle_error")
    def _timeout_is_a_lost_connection(context: Any) -> None:
        # A statement that timed out leaves its connection mid-protocol: never reuse it.
        if isinstance(context.original_exception, TimeoutError):
            context.is_disconnect = True

    return engine


def _enable_keepalive(connection: Any) -> None:
    """TCP keepalives on a driver connection: a peer that vanished without closing is
    noticed within about 25 s even while the connection idles in the pool."""
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection under one of the engine's pooled connections, for the few
    hot statements that skip the ORM (each runs on its own, outside any transaction).

    Driver errors come out as SQLAlchemy's `DBAPIError`, as from a session, so the
    same handlers map them (503 when the database cannot be reached). A connection
    that failed is dropped from the pool.
    """
    fairy = await greenlet_spawn(engine.sync_engine.raw_connection)
    try:
        yield fairy.driver_connection
    except Exception as exc:
        if not _is_driver_error(exc):
            raise
        error = OperationalError("driver statement", None, exc)
        if is_connection_error(error):
            await greenlet_spawn(fairy.invalidate, exc)
            error.connection_invalidated = True
        raise error from exc
    except BaseException:
        # Cancelled mid-statement: the connection's protocol state is unknown.
        fairy.invalidate()
        raise
    finally:
        # In a greenlet: returning a connection to a full pool closes it, which awaits.
        await greenlet_spawn(fairy.close)


class DriverStatement:
    """A Core statement compiled once for the driver under PostgreSQL (asyncpg): its SQL
    text and the order of its named parameters. For hot reads on `driver_connection`,
    so the query is still written, and its rules reused, as SQLAlchemy expressions."""

    def __init__(self, stmt: Any) -> None:
        compiled = stmt.compile(dialect=PGDialect_asyncpg())  # type: ignore[no-untyped-call]
        self.sql: str = compiled.string
        self._names = tuple(compiled.positiontup or ())
        # The statement's own constants (`literal(...)`, `.limit(1)`): bound with their value.
        self._constants = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required and bind.callable is None
        }

    def args(self, **values: Any) -> list[Any]:
        """The parameters in the order the SQL numbers them (constants filled in)."""
        return [values[n] if n in values else self._constants[n] for n in self._names]


def _is_driver_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith("asyncpg") or isinstance(exc, (OSError, ConnectionError))


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _dialect_insert(session: AsyncSession, table: Any) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {name}")


def upsert(
    session: AsyncSession,
    table: Any,
    values: dict[str, Any],
    conflict: list[str],
    update: dict[str, Any],
) -> Any:
    """INSERT ... ON CONFLICT (conflict) DO UPDATE SET update, for the session's dialect."""
    stmt = _dialect_insert(session, table).values(**values)
    return stmt.on_conflict_do_update(index_elements=conflict, set_=update)


def insert_ignoring_conflicts(session: AsyncSession, table: Any) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING for the session's dialect."""
    stmt: Insert = _dialect_insert(session, table).on_conflict_do_nothing()
    return stmt


_CONNECTION_ERROR_NAMES = frozenset(
    {
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "ConnectionFailureError",
        "InterfaceError",
        "TooManyConnectionsError",
        "AdminShutdownError",
        "CrashShutdownError",
        "PostgresConnectionError",
    }
)


_TRANSIENT_ERROR_NAMES = frozenset(
    {"DeadlockDetectedError", "SerializationError", "LockNotAvailableError"}
)


def is_transient_error(exc: DBAPIError) -> bool:
    """A conflict between transactions that a retry resolves (deadlock, serialization)."""
    seen: BaseException | None = exc.orig
    while seen is not None:
        if type(seen).__name__ in _TRANSIENT_ERROR_NAMES or "deadlock detected" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_connection_error(exc: DBAPIError) -> bool:
    """Whether a database error means "cannot reach the database" rather than a bad query."""
    if exc.connection_invalidated:
        return True
    seen: BaseException | None = exc.orig
    while seen is not None:
        if isinstance(seen, (OSError, ConnectionError, TimeoutError)):
            return True
        if type(seen).__name__ in _CONNECTION_ERROR_NAMES:
            return True
        if "database is locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def commit_or_conflict(session: AsyncSession, conflict_message: str, code: str) -> None:
    """Commit, turning a unique-constraint race into the same 409 the checks give."""
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(conflict_message, code=code) from None


class DriverColumns:
    """A table's columns as `$n::type` placeholders, from `$first` on, and a way to read
    a typed row's values in that order: for the hot statements that write whole rows."""

    def __init__(self, table: Table, first: int, skip: tuple[str, ...] = ()) -> None:
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        self.first = first
        self.columns = [c for c in table.columns if c.name not in skip]
        self.names = ", ".join(c.name for c in self.columns)
        self.placeholders = ", ".join(
            f"${first + i}::{c.type.compile(dialect=dialect)}" for i, c in enumerate(self.columns)
        )
        self.next = first + len(self.columns)
        self._read = attrgetter(*(c.key for c in self.columns))
        self._encoders: list[Callable[[Any], Any]] = [
            (lambda v: None if v is None else orjson.dumps(v).decode())
            if isinstance(c.type, JSON)
            else (lambda v: v)
            for c in self.columns
        ]

    def values(self, row: object | None) -> list[Any]:
        """The row's value of each column, in order (a typed row names every column)."""
        if row is None:
            return [None] * len(self.columns)
        return [
            encode(value) for encode, value in zip(self._encoders, self._read(row), strict=True)
        ]


async def fetch_batch(
    engine: AsyncEngine,
    sql: str,
    batch: list[list[Any]],
    order: Callable[[list[Any]], Any],
    record_class: Any = None,
) -> list[Any]:
    """One statement run for each item of a batch that came together, in one round trip
    and one transaction, in `order` (of the rows each will lock, so that batches of two
    processes wait for each other instead of deadlocking); one row per item, in the
    batch's order.

    Each statement sees the ones before it. If any fails, the transaction stores
    nothing, and each item runs again on its own, so that each caller gets its own
    answer or error; unless the database cannot be reached, which each would only find
    again."""
    ordered = sorted(range(len(batch)), key=lambda i: order(batch[i]))
    try:
        async with driver_connection(engine) as conn:
            found = await conn.fetchmany(
                sql, [batch[i] for i in ordered], record_class=record_class
            )
    except DBAPIError as exc:
        if len(batch) == 1 or is_connection_error(exc):
            raise
        return await asyncio.gather(
            *(_fetch_alone(engine, sql, args, record_class) for args in batch),
            return_exceptions=True,
        )
    results: list[Any] = [None] * len(batch)
    for position, index in enumerate(ordered):
        results[index] = found[position]
    return results


async def _fetch_alone(engine: AsyncEngine, sql: str, args: list[Any], record_class: Any) -> Any:
    async with driver_connection(engine) as conn:
        return await conn.fetchrow(sql, *args, record_class=record_class)


async def fetch_retrying(
    engine: AsyncEngine, sql: str, *args: Any, record_class: Any = None
) -> list[Any]:
    """One statement on `driver_connection`, its rows, made again when it collided with
    another transaction (`retry_conflicts`): the worker's batched writes."""

    async def run() -> list[Any]:
        async with driver_connection(engine) as conn:
            return list(await conn.fetch(sql, *args, record_class=record_class))

    return await retry_conflicts(run)


async def retry_conflicts(run: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """`run()`, made again when it collided with another transaction (a deadlock, a
    serialization failure): for background writes that nobody would retry otherwise."""
    for attempt in range(1, attempts + 1):
        try:
            return await run()
        except DBAPIError as exc:
            if attempt == attempts or not is_transient_error(exc):
                raise
    raise AssertionError("unreachable")
