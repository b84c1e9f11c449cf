"""Schedules: open at an instant, the next change, and what a schedule may say.

The daylight-saving cases use America/New_York in 2026: clocks spring forward on Sunday
2026-03-08 (02:00 EST becomes 03:00 EDT at 07:00 UTC) and fall back on Sunday
2026-11-01 (02:00 EDT becomes 01:00 EST at 06:00 UTC, so 01:00-02:00 happens twice:
05:00-06:00 UTC and 06:00-07:00 UTC). Every instant below is written in UTC by hand.

The property tests compare `is_open` and `next_change` with a reference model written
independently: each weekday as the set of its open minutes, closed days as a set of
dates, and the next change found by walking UTC minute by minute.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import Invalid
from app.services.schedules import (
    is_open,
    next_change,
    parse_away,
    parse_quiet_hours,
    parse_schedule,
    parse_timezone,
)

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAY = {day: [["00:00", "24:00"]] for day in DAYS}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def ny(weekly: dict[str, Any], closed: list[dict[str, Any]] | None = None) -> Any:
    return parse_schedule(
        {"timezone": "America/New_York", "weekly": weekly, "closed": closed or []}
    )


# --------------------------------------------------------------------------- open or not


def test_open_inside_an_interval_from_its_start_until_its_end() -> None:
    s = ny({"wed": [["08:00", "12:00"], ["13:00", "17:30"]]})
    # Wednesday 2026-06-03, EDT (UTC-4).
    assert not is_open(s, at("2026-06-03T11:59:59Z"))  # 07:59:59
    assert is_open(s, at("2026-06-03T12:00:00Z"))  # 08:00
    assert is_open(s, at("2026-06-03T15:59:59Z"))  # 11:59:59
    assert not is_open(s, at("2026-06-03T16:00:00Z"))  # 12:00: the end is closed
    assert is_open(s, at("2026-06-03T21:29:00Z"))  # 17:29
    assert not is_open(s, at("2026-06-03T21:30:00Z"))
    # Thursday is not listed: closed all day.
    assert not is_open(s, at("2026-06-04T14:00:00Z"))


def test_the_same_instant_is_read_in_the_schedules_own_zone() -> None:
    weekly = {"mon": [["09:00", "17:00"]]}
    instant = at("2026-06-01T14:00:00Z")  # Monday 10:00 in New York, 23:00 in Tokyo
    assert is_open(parse_schedule({"timezone": "America/New_York", "weekly": weekly}), instant)
    assert not is_open(parse_schedule({"timezone": "Asia/Tokyo", "weekly": weekly}), instant)


def test_a_night_opening_is_split_at_midnight_and_seen_as_one() -> None:
    s = ny({"mon": [["22:00", "24:00"]], "tue": [["00:00", "06:00"]]})
    assert is_open(s, at("2026-06-02T03:59:59Z"))  # Monday 23:59:59
    assert is_open(s, at("2026-06-02T04:00:00Z"))  # Tuesday 00:00
    assert not is_open(s, at("2026-06-02T10:00:00Z"))  # Tuesday 06:00
    # No change at midnight: from Monday 23:00 the next change is Tuesday 06:00.
    assert next_change(s, at("2026-06-02T03:00:00Z")) == at("2026-06-02T10:00:00Z")


def test_the_week_wraps_from_sunday_night_to_monday_morning() -> None:
    s = ny({"sun": [["20:00", "24:00"]], "mon": [["00:00", "02:00"]]})
    # Sunday 2026-06-07 23:30 EDT, then Monday 2026-06-08 01:59 and 02:00.
    assert is_open(s, at("2026-06-08T03:30:00Z"))
    assert is_open(s, at("2026-06-08T05:59:00Z"))
    assert not is_open(s, at("2026-06-08T06:00:00Z"))
    assert next_change(s, at("2026-06-08T03:30:00Z")) == at("2026-06-08T06:00:00Z")
    # Monday afternoon: the next opening is next Sunday at 20:00.
    assert next_change(s, at("2026-06-08T18:00:00Z")) == at("2026-06-15T00:00:00Z")


def test_closed_days_are_whole_local_days_both_ends_included() -> None:
    s = ny(ALL_DAY, [{"from": "2026-12-24", "to": "2026-12-25", "label": "Christmas"}])
    assert is_open(s, at("2026-12-24T04:59:59Z"))  # Dec 23, 23:59:59 EST
    assert not is_open(s, at("2026-12-24T05:00:00Z"))  # Dec 24, 00:00
    assert not is_open(s, at("2026-12-26T04:59:59Z"))  # Dec 25, 23:59:59
    assert is_open(s, at("2026-12-26T05:00:00Z"))  # Dec 26, 00:00
    assert next_change(s, at("2026-12-01T00:00:00Z")) == at("2026-12-24T05:00:00Z")
    assert next_change(s, at("2026-12-24T12:00:00Z")) == at("2026-12-26T05:00:00Z")
    assert next_change(s, at("2026-12-26T12:00:00Z")) is None


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError):
        is_open(ny(ALL_DAY), datetime(2026, 6, 1, 12, 0))


# --------------------------------------------------------------------------- daylight saving


def test_spring_forward_an_interval_through_the_missing_hour_is_open_an_hour_less() -> None:
    s = ny({"sun": [["01:30", "03:30"]]})
    assert not is_open(s, at("2026-03-08T06:29:00Z"))  # 01:29 EST
    assert is_open(s, at("2026-03-08T06:30:00Z"))  # 01:30 EST
    assert is_open(s, at("2026-03-08T06:59:59Z"))  # 01:59:59 EST
    assert is_open(s, at("2026-03-08T07:00:00Z"))  # 03:00 EDT
    assert not is_open(s, at("2026-03-08T07:30:00Z"))  # 03:30 EDT
    assert next_change(s, at("2026-03-08T06:00:00Z")) == at("2026-03-08T06:30:00Z")
    assert next_change(s, at("2026-03-08T06:30:00Z")) == at("2026-03-08T07:30:00Z")


def test_spring_forward_an_interval_inside_the_missing_hour_never_opens() -> None:
    s = ny({"sun": [["02:00", "02:30"]]})
    for minute in range(6 * 60, 9 * 60):  # 01:00 EST to 05:00 EDT
        assert not is_open(s, at("2026-03-08T00:00:00Z") + timedelta(minutes=minute))
    # Its next opening is the Sunday after, 02:00 EDT.
    assert next_change(s, at("2026-03-08T00:00:00Z")) == at("2026-03-15T06:00:00Z")


def test_spring_forward_an_interval_starting_in_the_missing_hour_opens_at_the_jump() -> None:
    s = ny({"sun": [["02:30", "04:00"]]})
    assert not is_open(s, at("2026-03-08T06:59:59Z"))  # 01:59:59 EST
    assert is_open(s, at("2026-03-08T07:00:00Z"))  # 03:00 EDT
    assert next_change(s, at("2026-03-08T05:00:00Z")) == at("2026-03-08T07:00:00Z")
    assert next_change(s, at("2026-03-08T07:00:00Z")) == at("2026-03-08T08:00:00Z")


def test_fall_back_an_interval_inside_the_repeated_hour_opens_twice() -> None:
    s = ny({"sun": [["01:15", "01:45"]]})
    opened = [
        minute
        for minute in range(4 * 60, 8 * 60)
        if is_open(s, at("2026-11-01T00:00:00Z") + timedelta(minutes=minute))
    ]
    # 05:15-05:45 UTC (EDT) and 06:15-06:45 UTC (EST): an hour in all.
    assert opened == [*range(5 * 60 + 15, 5 * 60 + 45), *range(6 * 60 + 15, 6 * 60 + 45)]
    changes = []
    instant = at("2026-11-01T04:00:00Z")
    for _ in range(5):
        found = next_change(s, instant)
        assert found is not None
        changes.append(found)
        instant = found
    assert changes == [
        at("2026-11-01T05:15:00Z"),
        at("2026-11-01T05:45:00Z"),
        at("2026-11-01T06:15:00Z"),
        at("2026-11-01T06:45:00Z"),
        at("2026-11-08T06:15:00Z"),  # next Sunday, 01:15 EST
    ]


def test_fall_back_an_interval_through_the_repeated_hour_reopens_when_the_clock_goes_back() -> None:
    s = ny({"sun": [["00:30", "01:30"]]})
    assert is_open(s, at("2026-11-01T04:30:00Z"))  # 00:30 EDT
    assert not is_open(s, at("2026-11-01T05:30:00Z"))  # 01:30 EDT
    assert is_open(s, at("2026-11-01T06:00:00Z"))  # 01:00 EST, the second time
    assert not is_open(s, at("2026-11-01T06:30:00Z"))  # 01:30 EST
    assert next_change(s, at("2026-11-01T05:40:00Z")) == at("2026-11-01T06:00:00Z")
    assert next_change(s, at("2026-11-01T06:00:00Z")) == at("2026-11-01T06:30:00Z")


def test_a_day_of_open_hours_lasts_23_and_25_hours_on_the_change_days() -> None:
    s = ny(
        ALL_DAY,
        [{"from": "2026-03-07", "to": "2026-03-07"}, {"from": "2026-03-09", "to": "2026-03-09"}],
    )
    opens = next_change(s, at("2026-03-07T12:00:00Z"))
    assert opens is not None
    closes = next_change(s, opens)
    assert opens == at("2026-03-08T05:00:00Z") and closes == at("2026-03-09T04:00:00Z")
    s = ny(
        ALL_DAY,
        [{"from": "2026-10-31", "to": "2026-10-31"}, {"from": "2026-11-02", "to": "2026-11-02"}],
    )
    opens = next_change(s, at("2026-10-31T12:00:00Z"))
    assert opens is not None
    closes = next_change(s, opens)
    assert closes is not None and closes - opens == timedelta(hours=25)


# --------------------------------------------------------------------------- next change


def test_never_changes_without_hours_or_when_always_open() -> None:
    instant = at("2026-06-01T12:00:00Z")
    assert next_change(ny({}), instant) is None
    assert next_change(ny(ALL_DAY), instant) is None


def test_a_long_closure_is_crossed_at_once() -> None:
    s = ny({"mon": [["09:00", "17:00"]]}, [{"from": "2026-01-01", "to": "2099-12-31"}])
    # 2100-01-04 is the first Monday after the closure: 09:00 EST.
    assert next_change(s, at("2026-06-01T14:00:00Z")) == at("2100-01-04T14:00:00Z")


def test_quiet_hours_through_midnight_as_a_schedule() -> None:
    quiet = parse_quiet_hours({"start": "21:00", "end": "08:00"})
    assert quiet is not None
    s = quiet.schedule("America/New_York")
    assert is_open(s, at("2026-06-02T02:00:00Z"))  # 22:00 EDT: quiet
    assert not is_open(s, at("2026-06-02T14:00:00Z"))  # 10:00 EDT
    assert next_change(s, at("2026-06-02T02:00:00Z")) == at("2026-06-02T12:00:00Z")  # 08:00


# --------------------------------------------------------------------------- what a schedule may say


def field_of(excinfo: pytest.ExceptionInfo[Invalid]) -> str:
    assert excinfo.value.status == 422 and excinfo.value.code == "validation_error"
    (detail,) = excinfo.value.details
    return str(detail["field"])


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "schedule.timezone"),
        ({"timezone": "america/new_york"}, "schedule.timezone"),
        ({"timezone": "localtime"}, "schedule.timezone"),
        ({"timezone": ""}, "schedule.timezone"),
        ({"weekly": {"monday": [["08:00", "12:00"]]}}, "schedule.weekly"),
        ({"weekly": {"mon": [["8:00", "12:00"]]}}, "schedule.weekly.mon.0.0"),
        ({"weekly": {"mon": [["08:00", "25:00"]]}}, "schedule.weekly.mon.0.1"),
        ({"weekly": {"mon": [["08:00", "12:60"]]}}, "schedule.weekly.mon.0.1"),
        ({"weekly": {"mon": [["08:00\n", "12:00"]]}}, "schedule.weekly.mon.0.0"),
        ({"weekly": {"mon": [["08:00"]]}}, "schedule.weekly.mon.0"),
        ({"weekly": {"mon": [["12:00", "08:00"]]}}, "schedule.weekly.mon.0"),
        ({"weekly": {"mon": [["22:00", "06:00"]]}}, "schedule.weekly.mon.0"),
        ({"weekly": {"mon": [["08:00", "08:00"]]}}, "schedule.weekly.mon.0"),
        ({"weekly": {"tue": [["24:00", "24:00"]]}}, "schedule.weekly.tue.0.0"),
        ({"weekly": {"wed": [["13:00", "17:00"], ["08:00", "13:30"]]}}, "schedule.weekly.wed.1"),
        ({"weekly": {"wed": [["08:00", "17:00"], ["09:00", "10:00"]]}}, "schedule.weekly.wed.1"),
        ({"closed": [{"from": "2026-12-26", "to": "2026-12-24"}]}, "schedule.closed.0.to"),
        ({"closed": [{"from": "2026-02-30", "to": "2026-03-01"}]}, "schedule.closed.0.from"),
        ({"closed": [{"from": "20261224", "to": "2026-12-24"}]}, "schedule.closed.0.from"),
        ({"closed": [{"from": "2026-12-24"}]}, "schedule.closed.0.to"),
        ({"closed": [{"from": "0001-01-01", "to": "0001-01-02"}]}, "schedule.closed.0.from"),
        (
            {"closed": [{"from": "2026-12-24", "to": "2026-12-24", "label": "x" * 101}]},
            "schedule.closed.0.label",
        ),
        ({"opening": {}}, "schedule"),
    ],
)
def test_a_bad_schedule_is_a_422_naming_the_field(schedule: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as excinfo:
        parse_schedule(schedule)
    assert field_of(excinfo) == field


def test_a_schedule_is_stored_as_it_is_shown_with_its_zone() -> None:
    s = parse_schedule(
        {
            "weekly": {
                "fri": [["13:00", "17:00"], ["08:00", "12:00"]],
                "sat": [],
                "mon": [["09:00", "24:00"]],
            },
            "closed": [
                {"from": "2026-12-31", "to": "2027-01-01"},
                {"from": "2026-12-25", "to": "2026-12-25", "label": "Christmas"},
            ],
        },
        default_timezone="Europe/Paris",
    )
    shown = s.as_json()
    assert shown == {
        "timezone": "Europe/Paris",
        "weekly": {"mon": [["09:00", "24:00"]], "fri": [["08:00", "12:00"], ["13:00", "17:00"]]},
        "closed": [
            {"from": "2026-12-25", "to": "2026-12-25", "label": "Christmas"},
            {"from": "2026-12-31", "to": "2027-01-01", "label": None},
        ],
    }
    assert parse_schedule(shown) == s
    # Intervals that touch are allowed.
    assert is_open(
        ny({"mon": [["08:00", "12:00"], ["12:00", "17:00"]]}), at("2026-06-01T16:00:00Z")
    )


def test_timezones_are_iana_names() -> None:
    assert str(parse_timezone("Europe/Berlin", "timezone")) == "Europe/Berlin"
    with pytest.raises(Invalid) as excinfo:
        parse_timezone("../../etc/passwd", "timezone")
    assert field_of(excinfo) == "timezone"


@pytest.mark.parametrize(
    ("away", "field"),
    [
        ([{"from": "2026-07-01T09:00:00Z", "until": "2026-07-01T09:00:00Z"}], "away.0.until"),
        ([{"from": "2026-07-02T09:00:00Z", "until": "2026-07-01T09:00:00Z"}], "away.0.until"),
        ([{"from": "2026-07-01T09:00:00", "until": "2026-07-02T09:00:00Z"}], "away.0.from"),
        ([{"from": "tomorrow", "until": "2026-07-02T09:00:00Z"}], "away.0.from"),
        ([{"from": "0001-01-01T00:00:00+14:00", "until": "2026-07-02T09:00:00Z"}], "away.0.from"),
        ([{"from": "2026-07-01T09:00:00Z"}], "away.0.until"),
    ],
)
def test_a_bad_away_period_is_a_422_naming_the_field(away: list[Any], field: str) -> None:
    with pytest.raises(Invalid) as excinfo:
        parse_away(away)
    assert field_of(excinfo) == field


def test_away_periods_are_instants_in_utc_from_included_until_excluded() -> None:
    (period,) = parse_away(
        [{"from": "2026-07-01T09:00:00-04:00", "until": "2026-07-03T17:00:00+02:00"}]
    )
    assert period.start == datetime(2026, 7, 1, 13, tzinfo=UTC)
    assert period.holds(period.start) and not period.holds(period.until)
    assert period.as_json() == {
        "from": "2026-07-01T13:00:00Z",
        "until": "2026-07-03T15:00:00Z",
    }


@pytest.mark.parametrize(
    ("quiet", "field"),
    [
        ({"start": "21:00", "end": "21:00"}, "quiet_hours.end"),
        ({"start": "21:00", "end": "24:00"}, "quiet_hours.end"),
        ({"start": "9pm", "end": "08:00"}, "quiet_hours.start"),
        ({"start": "21:00"}, "quiet_hours.end"),
        ("21:00-08:00", "quiet_hours"),
    ],
)
def test_bad_quiet_hours_are_a_422_naming_the_field(quiet: Any, field: str) -> None:
    with pytest.raises(Invalid) as excinfo:
        parse_quiet_hours(quiet)
    assert field_of(excinfo) == field


# --------------------------------------------------------------------------- the reference model

# Zones with daylight saving north and south, a half-hour shift, an odd offset, none.
ZONES = [
    "America/New_York",
    "Europe/London",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "UTC",
]
# Around each of their 2026 offset changes, and ordinary days.
AROUND = [
    at("2026-03-08T00:00:00Z"),
    at("2026-11-01T00:00:00Z"),
    at("2026-03-29T00:00:00Z"),
    at("2026-10-25T00:00:00Z"),
    at("2026-04-04T12:00:00Z"),
    at("2026-09-05T12:00:00Z"),
    at("2026-04-04T14:00:00Z"),
    at("2026-10-03T14:00:00Z"),
    at("2026-06-15T00:00:00Z"),
    at("2026-12-31T12:00:00Z"),
]
# Times where daylight-saving changes happen, and any minute.
MINUTES = st.one_of(
    st.sampled_from([0, 30, 60, 90, 100, 120, 130, 150, 180, 1380, 1410, 1440]),
    st.integers(0, 1440),
)


def clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def day_intervals(points: list[int]) -> list[list[str]]:
    points = sorted(points)[: len(points) // 2 * 2]
    return [[clock(points[i]), clock(points[i + 1])] for i in range(0, len(points), 2)]


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    """Random weekly hours (often the same every day, so that a change day has them),
    a few closed days."""
    weekly: dict[str, list[list[str]]] = {}
    every_day = day_intervals(sorted(draw(st.sets(MINUTES, max_size=6))))
    same = draw(st.booleans())
    for day in DAYS:
        intervals = every_day if same else day_intervals(sorted(draw(st.sets(MINUTES, max_size=6))))
        if intervals and (same or draw(st.integers(0, 3))):
            weekly[day] = intervals
    closed = []
    for _ in range(draw(st.integers(0, 3))):
        first = draw(st.dates(date(2026, 2, 25), date(2027, 1, 5)))
        closed.append(
            {
                "from": first.isoformat(),
                "to": (first + timedelta(days=draw(st.integers(0, 4)))).isoformat(),
            }
        )
    return {"timezone": draw(st.sampled_from(ZONES)), "weekly": weekly, "closed": closed}


instants = st.builds(
    lambda base, minutes, seconds: base + timedelta(minutes=minutes, seconds=seconds),
    st.sampled_from(AROUND),
    st.one_of(st.integers(-1440, 1440), st.integers(-2 * 1440, 3 * 1440)),
    st.sampled_from([0, 0, 0, 1, 59.5]),
)


class Reference:
    """Each weekday as the set of its open minutes, closed days as a set of dates; open
    at an instant iff its wall clock's minute is one of its weekday's open minutes and
    its date is not a closed one."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.zone = ZoneInfo(data["timezone"])
        self.open_minutes: dict[int, set[int]] = {i: set() for i in range(7)}
        for i, day in enumerate(DAYS):
            for start, end in data["weekly"].get(day, []):
                h1, m1 = (int(x) for x in start.split(":"))
                h2, m2 = (int(x) for x in end.split(":"))
                self.open_minutes[i].update(range(h1 * 60 + m1, h2 * 60 + m2))
        self.closed_dates: set[date] = set()
        for c in data["closed"]:
            d = date.fromisoformat(c["from"])
            while d <= date.fromisoformat(c["to"]):
                self.closed_dates.add(d)
                d += timedelta(days=1)

    def open(self, instant: datetime) -> bool:
        wall = instant.astimezone(self.zone)
        if wall.date() in self.closed_dates:
            return False
        return wall.hour * 60 + wall.minute in self.open_minutes[wall.weekday()]


HORIZON_MINUTES = 9 * 1440


def check_is_open(data: dict[str, Any], instant: datetime) -> None:
    assert is_open(parse_schedule(data), instant) == Reference(data).open(instant)


def check_next_change(data: dict[str, Any], instant: datetime) -> None:
    """Every zone here changes its offset on whole minutes, and every boundary is a
    whole local minute, so the model finds each change walking whole UTC minutes."""
    found = next_change(parse_schedule(data), instant)
    model = Reference(data)
    now = model.open(instant)
    minute = instant.replace(second=0, microsecond=0) + timedelta(minutes=1)
    # Read the model only up to what the code found (or the horizon), to keep it quick.
    end = instant + timedelta(minutes=HORIZON_MINUTES)
    if found is not None:
        end = min(end, found)
    expected = None
    while minute <= end:
        if model.open(minute) != now:
            expected = minute
            break
        minute += timedelta(minutes=1)
    if expected is not None:
        assert found == expected
    else:
        assert found is None or found > instant + timedelta(minutes=HORIZON_MINUTES)


@settings(max_examples=600, deadline=None)
@given(schedules(), instants)
def test_is_open_agrees_with_the_minute_by_minute_model(
    data: dict[str, Any], instant: datetime
) -> None:
    check_is_open(data, instant)


@settings(max_examples=250, deadline=None)
@given(schedules(), instants)
def test_next_change_is_the_first_minute_the_model_changes(
    data: dict[str, Any], instant: datetime
) -> None:
    check_next_change(data, instant)


def offset_changes(zone_name: str, year: int = 2026) -> list[datetime]:
    """The instants a zone's offset changes in a year (hour by hour, then to the minute)."""
    zone = ZoneInfo(zone_name)
    changes = []
    hour = datetime(year, 1, 1, tzinfo=UTC)
    while hour.year == year:
        nxt = hour + timedelta(hours=1)
        if hour.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            minute = hour
            while minute.astimezone(zone).utcoffset() == hour.astimezone(zone).utcoffset():
                minute += timedelta(minutes=1)
            changes.append(minute)
        hour = nxt
    return changes


CHANGES = [(zone, change) for zone in ZONES for change in offset_changes(zone)]


def test_the_zones_change_offsets_as_the_tests_expect() -> None:
    assert ("America/New_York", at("2026-03-08T07:00:00Z")) in CHANGES
    assert ("America/New_York", at("2026-11-01T06:00:00Z")) in CHANGES
    assert {zone for zone, _ in CHANGES} == {
        "America/New_York",
        "Europe/London",
        "America/Santiago",
        "Australia/Lord_Howe",
    }


@st.composite
def around_offset_changes(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    """A schedule whose hours start or end near the wall-clock times an offset change
    skips or repeats, every day, and an instant shortly before or after the change."""
    zone, change = draw(st.sampled_from(CHANGES))
    before = (change - timedelta(seconds=1)).astimezone(ZoneInfo(zone))
    after = change.astimezone(ZoneInfo(zone))
    near = sorted({before.hour * 60 + before.minute + 1, after.hour * 60 + after.minute})
    points = draw(
        st.sets(
            st.one_of(
                st.integers(max(0, near[0] - 90), min(1440, near[-1] + 90)),
                st.sampled_from([0, 1440]),
            ),
            max_size=4,
        )
    )
    intervals = day_intervals(sorted(points))
    data = {
        "timezone": zone,
        "weekly": {day: intervals for day in DAYS} if intervals else {},
        "closed": [],
    }
    instant = change + timedelta(minutes=draw(st.integers(-6 * 60, 2 * 60)))
    return data, instant


@settings(max_examples=300, deadline=None)
@given(around_offset_changes())
def test_open_and_next_change_agree_with_the_model_across_offset_changes(
    case: tuple[dict[str, Any], datetime],
) -> None:
    data, instant = case
    check_is_open(data, instant)
    check_next_change(data, instant)
