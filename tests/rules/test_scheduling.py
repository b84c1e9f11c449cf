"""When a send goes: `send_at` read and bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.errors import Invalid
from app.services.scheduling import parse_send_at

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-12-01T12:00:00Z", NOW),
        ("2026-12-01T07:30:00-05:00", NOW + timedelta(minutes=30)),
        ("2027-01-05T12:00:00+00:00", NOW + timedelta(days=35)),
        # A client's clock a little behind ours: taken as now.
        ("2026-12-01T11:59:30Z", NOW - timedelta(seconds=30)),
    ],
)
def test_send_at_is_an_instant_from_now_to_35_days_ahead(raw: str, expected: datetime) -> None:
    assert parse_send_at(raw, NOW) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "2026-12-01T11:00:00Z",
        "2027-01-05T12:00:01Z",
        "2026-12-01T13:00:00",
        "2026-12-01",
        "13:00",
        "next tuesday",
        "",
        "2026-13-01T12:00:00Z",
        "99999-12-01T12:00:00Z",
    ],
)
def test_anything_else_is_invalid_send_at(raw: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_send_at(raw, NOW)
    assert caught.value.code == "invalid_send_at"
    assert caught.value.details == [{"field": "send_at", "value": raw}]
