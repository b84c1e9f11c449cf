"""The organization's address book: contacts, their names stored encrypted only, and the
keyed hashes that let them be searched (a blind index)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, UniqueConstraint
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
    organization's own, so equal names in two organizations share no term."""

    __tablename__ = "contact_search_terms"

    term: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
