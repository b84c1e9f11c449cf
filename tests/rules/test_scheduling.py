"""When a send goes: `send_at` read and bounded, the recipient's time zone, and the end of
quiet hours on the recipient's wall clock, daylight-saving changes included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.errors import Invalid
from app.services.phone import fictional_number
from app.services.schedules import QuietHours
from app.services.scheduling import parse_send_at, quiet_until, recipient_zone

NEW_YORK = "America/New_York"
NIGHTS = QuietHours(start=21 * 60, end=8 * 60)  # 21:00 to 08:00
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("number", "zone"),
    [
        (fictional_number(1, "808"), "Pacific/Honolulu"),
        (fictional_number(1, "212"), NEW_YORK),
        (fictional_number(1, "415"), "America/Los_Angeles"),
        ("+33612345678", "Europe/Paris"),
        # Alaska's area code spans Anchorage and Adak; toll-free numbers every zone of
        # the plan: the organization's zone decides.
        (fictional_number(1, "907"), "Asia/Tokyo"),
        ("+18005550100", "Asia/Tokyo"),
    ],
)
def test_a_number_has_its_own_zone_else_the_organizations(number: str, zone: str) -> None:
    assert recipient_zone(number, "Asia/Tokyo") == zone


@pytest.mark.parametrize(
    ("instant", "ends"),
    [
        # 23:00 EST on the eve of spring forward (2026-03-08): ends at 08:00 EDT.
        (datetime(2026, 3, 8, 4, 0, tzinfo=UTC), datetime(2026, 3, 8, 12, 0, tzinfo=UTC)),
        # 23:00 EDT on the eve of fall back (2026-11-01): ends at 08:00 EST.
        (datetime(2026, 11, 1, 3, 0, tzinfo=UTC), datetime(2026, 11, 1, 13, 0, tzinfo=UTC)),
        # 21:00 sharp: quiet from then on.
        (datetime(2026, 12, 2, 2, 0, tzinfo=UTC), datetime(2026, 12, 2, 13, 0, tzinfo=UTC)),
        # 07:59 local: one more minute.
        (datetime(2026, 12, 2, 12, 59, tzinfo=UTC), datetime(2026, 12, 2, 13, 0, tzinfo=UTC)),
        # 08:00 sharp, and the afternoon: not quiet.
        (datetime(2026, 12, 2, 13, 0, tzinfo=UTC), None),
        (datetime(2026, 12, 2, 19, 0, tzinfo=UTC), None),
    ],
)
def test_quiet_hours_end_on_the_recipients_wall_clock(
    instant: datetime, ends: datetime | None
) -> None:
    assert quiet_until(NIGHTS, NEW_YORK, instant) == ends


def test_quiet_hours_within_one_day() -> None:
    lunch = QuietHours(start=12 * 60, end=13 * 60)
    assert quiet_until(lunch, "UTC", datetime(2026, 12, 1, 12, 30, tzinfo=UTC)) == datetime(
        2026, 12, 1, 13, 0, tzinfo=UTC
    )
    assert quiet_until(lunch, "UTC", datetime(2026, 12, 1, 13, 30, tzinfo=UTC)) is None


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
