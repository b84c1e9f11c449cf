"""The typed rows name exactly their table's columns, so the one-statement store reads
every column from a row and no column is left to chance."""

from __future__ import annotations

import dataclasses

import pytest

from app.models import Conversation, DeliveryJob, Message
from app.models.rows import ConversationRow, DeliveryJobRow, MessageRow


@pytest.mark.parametrize(
    ("row", "model"),
    [(ConversationRow, Conversation), (MessageRow, Message), (DeliveryJobRow, DeliveryJob)],
)
def test_a_row_names_every_column_of_its_table(row: type, model: type) -> None:
    columns = {c.key for c in model.__table__.columns}  # type: ignore[attr-defined]
    assert {f.name for f in dataclasses.fields(row)} == columns
