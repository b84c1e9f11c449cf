"""The organization's address book: contacts, their names stored encrypted only, and the
keyed hashes that let them be searched (a blind index)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.ids import new_id
from app.models.base import Base, utcnow


class Contact(Base):
    """A person the organization texts: one per phone number. The name is patient data:
    only its ciphertext is stored, bound to the row and the organization."""

    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("org_id", "phone_number"),
        Index("ix_contacts_org_id_id", "org_id", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    phone_number: Mapped[str] = mapped_column(String(16))
    name_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ContactSearchTerm(Base):
    """One keyed hash of a piece of a contact's name or number (`services.contact_search`),
    under the key that sealed the contact's name. Looked up by term; the hash key is the
    organization's own, so equal names in two organizations share no term.

    The contact's number (stored in plain on the contact too) rides along in the primary
    key's index: the numbers of the contacts holding a term are one index-only range read,
    with no visit to each contact (the inbox's search filters conversations by them)."""

    __tablename__ = "contact_search_terms"
    __table_args__ = (
        PrimaryKeyConstraint("term", "contact_id", postgresql_include=["phone_number"]),
    )

    term: Mapped[int] = mapped_column(BigInteger)
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    phone_number: Mapped[str] = mapped_column(String(16))
