"""Declarative base, column types shared by every model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

from sqlalchemy import JSON, DateTime, MetaData, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        uuid.UUID: Uuid(),
        dict[str, Any]: JSON(),
    }


M = TypeVar("M", bound=Base)


class Draft(SimpleNamespace):
    """A new row's columns as plain attributes, not yet an ORM object.

    For the hot paths that write with one driver statement: building and instrumenting
    ORM objects would cost more there than the statement. Like a new ORM object, a
    column never set reads None (its default is the table's, applied on insert).
    Make drafts of a model with `draft_type(Model)`; `orm` makes the model object
    where a session is used instead.
    """

    model: ClassVar[type[Any]]
    _keys: ClassVar[frozenset[str]] = frozenset()

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes never set.
        if name in self._keys:
            return None
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def orm(self, model: type[M]) -> M:
        if model is not self.model:
            raise TypeError(f"a {type(self).__name__} is not a draft of {model.__name__}")
        return model(**vars(self))


def draft_type(model: type[Base]) -> type[Draft]:
    """The Draft class of one model: it knows the model's column attributes."""
    keys = frozenset(c.key for c in model.__table__.columns)
    return type(f"{model.__name__}Draft", (Draft,), {"model": model, "_keys": keys})
