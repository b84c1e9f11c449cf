"""Request and response shapes for the organization's contacts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import Page, Request
from app.schemas.directory import PhoneInput
from app.vocabulary import MAX_CONTACT_NAME_CHARS

ContactName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CONTACT_NAME_CHARS),
    Field(description="Patient data: stored encrypted.", examples=["Maria Gonzalez"]),
]


class ContactCreate(Request):
    phone_number: PhoneInput
    name: ContactName


class ContactUpdate(Request):
    phone_number: PhoneInput | None = None
    name: ContactName | None = None


class ContactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    phone_number: str
    name: str
    created_at: datetime
    updated_at: datetime


class ContactPage(Page[ContactOut]):
    """A page of contacts: contacts, oldest first."""
