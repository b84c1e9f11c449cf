"""Engine, sessions, and the few statements that differ between PostgreSQL and SQLite."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
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
    return create_async_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_pre_ping=settings.database_pre_ping,
        pool_recycle=1800,
        **_JSON,
    )


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
        error = OperationalError("inbound statement", None, exc)
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
