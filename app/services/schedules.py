"""Schedules: opening hours in a time zone, closed days, away periods, quiet hours; and
when they hold.

A schedule is `{timezone, weekly, closed}` (API.md, "Schedules"). It is *open* at an
instant when that instant, read on the wall clocks of its time zone, falls inside an
interval of its weekday and on no closed day. This module is pure (no database, no
clock): one parser reads both what the API receives and what the database stores, so
one rule validates both; `is_open` answers for an instant; `next_change` says when the
answer changes next, for whatever must wait for a schedule (held messages, quiet hours).

Where the contract is silent:
- An interval `[start, end)` is half-open: open from `start`, closed at `end` sharp.
  "24:00" may end an interval (the end of the day); no interval crosses midnight. A
  night opening is two intervals, `["22:00", "24:00"]` on one day and `["00:00",
  "06:00"]` on the next, and `next_change` sees one opening through midnight. The
  intervals of a day may touch but not overlap.
- Daylight-saving changes follow the wall clock. On the spring-forward day the skipped
  times never happen: an interval inside the skipped hour is never open, one through it
  is open an hour less. On the fall-back day the repeated hour happens twice, and is
  open both times where an interval holds it.
- Closed days are whole local days, `from` and `to` included.
- A schedule without `timezone` takes the one it is given by its caller (the
  organization's), and is stored with it.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from app.errors import invalid_field
from app.vocabulary import (
    CLOCK_TIME_PATTERN,
    DATE_PATTERN,
    DEFAULT_TIMEZONE,
    MAX_AWAY_PERIODS,
    MAX_CLOSED_PERIODS,
    MAX_INTERVALS_PER_DAY,
    MAX_LABEL_CHARS,
    WEEKDAYS,
    format_instant,
)

MINUTES_PER_DAY = 24 * 60
# The years a closed day or an away period may fall in: any clinic's, and far from the
# ends of the calendar, where date arithmetic overflows.
FIRST_YEAR, LAST_YEAR = 2000, 2199

_CLOCK = re.compile(CLOCK_TIME_PATTERN)
_DATE = re.compile(DATE_PATTERN)
# Names the time-zone database holds that are no place anyone lives.
_NOT_PLACES = frozenset({"localtime", "Factory", "posixrules"})

Interval = tuple[int, int]  # minutes of the day, [start, end)


# --------------------------------------------------------------------------- time zones


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_PLACES


def parse_timezone(name: object, field_path: str) -> ZoneInfo:
    """An IANA time zone by its name ("America/New_York"), or a 422 naming the field."""
    if not isinstance(name, str) or name not in _zone_names():
        shown = repr(name[:64]) if isinstance(name, str) else "this"
        raise invalid_field(
            field_path, f"{shown} is not an IANA time zone name such as 'America/New_York'."
        )
    return ZoneInfo(name)


# --------------------------------------------------------------------------- schedules


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(value: object, field_path: str) -> int:
    if not isinstance(value, str) or not _CLOCK.fullmatch(value):
        raise invalid_field(field_path, "a time is 'HH:MM' on a 24-hour clock, 00:00 to 24:00.")
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


def _day(value: object, field_path: str) -> date:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise invalid_field(field_path, "a day is 'YYYY-MM-DD'.")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise invalid_field(field_path, f"{value} is not a day of the calendar.") from None
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise invalid_field(field_path, f"a day falls in the years {FIRST_YEAR} to {LAST_YEAR}.")
    return day


def _is_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


@dataclass(frozen=True, slots=True)
class ClosedDays:
    """Whole local days closed, `first` to `last` included (a holiday, a closure)."""

    first: date
    last: date
    label: str | None = None


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: its zone, each weekday's open intervals, its closed days."""

    timezone: str
    # Monday first, each day's intervals sorted.
    weekly: tuple[tuple[Interval, ...], ...]
    closed: tuple[ClosedDays, ...]
    zone: ZoneInfo = field(compare=False, repr=False)
    # The closed days merged into runs of consecutive days: first days, last days.
    _run_starts: tuple[date, ...] = field(compare=False, repr=False)
    _run_ends: tuple[date, ...] = field(compare=False, repr=False)
    # Each weekday's minutes where the state may change: midnight, starts and ends.
    _walls: tuple[tuple[int, ...], ...] = field(compare=False, repr=False)
    never_open: bool = field(compare=False, repr=False)
    # Open at every minute of every weekday (closed days aside).
    open_all_week: bool = field(compare=False, repr=False)

    def closed_on(self, day: date) -> bool:
        """Whether the whole local day is closed."""
        i = bisect_right(self._run_starts, day) - 1
        return i >= 0 and day <= self._run_ends[i]

    def closed_until(self, day: date) -> date | None:
        """The last day of the run of closed days holding `day`, if one does."""
        i = bisect_right(self._run_starts, day) - 1
        return self._run_ends[i] if i >= 0 and day <= self._run_ends[i] else None

    def next_closed_after(self, day: date) -> date | None:
        """The first day of the next run of closed days starting after `day`."""
        i = bisect_right(self._run_starts, day)
        return self._run_starts[i] if i < len(self._run_starts) else None

    def as_json(self) -> dict[str, Any]:
        """The schedule as the API shows it and the database stores it."""
        return {
            "timezone": self.timezone,
            "weekly": {
                WEEKDAYS[i]: [[_clock(start), _clock(end)] for start, end in intervals]
                for i, intervals in enumerate(self.weekly)
                if intervals
            },
            "closed": [
                {"from": c.first.isoformat(), "to": c.last.isoformat(), "label": c.label}
                for c in self.closed
            ],
        }


def make_schedule(
    timezone: str,
    weekly: Sequence[Sequence[Interval]],
    closed: Sequence[ClosedDays] = (),
) -> Schedule:
    """A schedule from checked parts (`parse_schedule` checks them; so may a caller that
    builds one in code, such as quiet hours)."""
    days = tuple(tuple(sorted(day)) for day in weekly)
    assert len(days) == len(WEEKDAYS)
    ordered = tuple(sorted(closed, key=lambda c: (c.first, c.last)))
    starts: list[date] = []
    ends: list[date] = []
    for c in ordered:
        if ends and c.first <= ends[-1] + timedelta(days=1):
            ends[-1] = max(ends[-1], c.last)
        else:
            starts.append(c.first)
            ends.append(c.last)
    walls = tuple(
        tuple(sorted({0} | {s for s, _ in day} | {e for _, e in day if e < MINUTES_PER_DAY}))
        for day in days
    )
    return Schedule(
        timezone=timezone,
        weekly=days,
        closed=ordered,
        zone=ZoneInfo(timezone),
        _run_starts=tuple(starts),
        _run_ends=tuple(ends),
        _walls=walls,
        never_open=not any(days),
        open_all_week=all(_merged(day) == [(0, MINUTES_PER_DAY)] for day in days),
    )


def _merged(intervals: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def parse_schedule(
    data: object, field_path: str = "schedule", *, default_timezone: str = DEFAULT_TIMEZONE
) -> Schedule:
    """A schedule from its JSON shape `{timezone, weekly, closed}`, checked; a 422 naming
    the field for a bad zone, day, time, interval, overlap or closed day."""
    if not isinstance(data, Mapping):
        raise invalid_field(field_path, "a schedule is an object {timezone, weekly, closed}.")
    for key in data:
        if key not in ("timezone", "weekly", "closed"):
            raise invalid_field(field_path, f"{str(key)[:20]!r} is not a field of a schedule.")
    name = data.get("timezone")
    name = default_timezone if name is None else name
    parse_timezone(name, f"{field_path}.timezone")
    weekly = _parse_weekly(data.get("weekly") or {}, f"{field_path}.weekly")
    closed = _parse_closed(data.get("closed") or [], f"{field_path}.closed")
    return make_schedule(name, weekly, closed)


def _parse_weekly(raw: object, field_path: str) -> list[list[Interval]]:
    if not isinstance(raw, Mapping):
        raise invalid_field(field_path, "weekly maps days (mon..sun) to lists of intervals.")
    for key in raw:
        if key not in WEEKDAYS:
            raise invalid_field(
                field_path, f"{str(key)[:20]!r} is not a day: mon, tue, wed, thu, fri, sat, sun."
            )
    weekly: list[list[Interval]] = []
    for day in WEEKDAYS:
        where = f"{field_path}.{day}"
        given = raw.get(day) or []
        if not _is_list(given):
            raise invalid_field(where, 'a day is a list of ["HH:MM", "HH:MM"] intervals.')
        if len(given) > MAX_INTERVALS_PER_DAY:
            raise invalid_field(where, f"at most {MAX_INTERVALS_PER_DAY} intervals a day.")
        found: list[tuple[int, int, int]] = []
        for index, pair in enumerate(given):
            at = f"{where}.{index}"
            if not _is_list(pair) or len(pair) != 2:
                raise invalid_field(at, 'an interval is ["HH:MM", "HH:MM"].')
            start, end = _minutes(pair[0], f"{at}.0"), _minutes(pair[1], f"{at}.1")
            if start == MINUTES_PER_DAY:
                raise invalid_field(f"{at}.0", "an interval cannot start at 24:00; start at 00:00.")
            if end <= start:
                raise invalid_field(
                    at,
                    "an interval ends after it starts; to stay open past midnight, end it "
                    "at 24:00 and open the next day at 00:00.",
                )
            found.append((start, end, index))
        found.sort()
        for (s0, e0, i0), (s1, _, i1) in pairwise(found):
            if s1 < e0:
                raise invalid_field(
                    f"{where}.{max(i0, i1)}",
                    f"overlaps the interval {_clock(s0)}-{_clock(e0)} of the same day.",
                )
        weekly.append([(start, end) for start, end, _ in found])
    return weekly


def _objects(
    raw: object, field_path: str, fields: tuple[str, ...], limit: int
) -> list[tuple[str, Mapping[str, Any]]]:
    """The objects of a list, each with its path: at most `limit` of them, each with no
    other fields than `fields`; else a 422 naming the list or the object."""
    shape = "{" + ", ".join(fields) + "}"
    if not _is_list(raw):
        raise invalid_field(field_path, f"a list of {shape}.")
    assert isinstance(raw, Sequence)
    if len(raw) > limit:
        raise invalid_field(field_path, f"at most {limit} of them.")
    found = []
    for index, item in enumerate(raw):
        at = f"{field_path}.{index}"
        if not isinstance(item, Mapping) or set(item) - set(fields):
            raise invalid_field(at, f"each is {shape}.")
        found.append((at, item))
    return found


def _parse_closed(raw: object, field_path: str) -> list[ClosedDays]:
    closed = []
    for at, item in _objects(raw, field_path, ("from", "to", "label"), MAX_CLOSED_PERIODS):
        first = _day(item.get("from"), f"{at}.from")
        last = _day(item.get("to"), f"{at}.to")
        if last < first:
            raise invalid_field(f"{at}.to", "the last closed day is on or after the first.")
        label = item.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL_CHARS):
            raise invalid_field(
                f"{at}.label", f"a label is text of at most {MAX_LABEL_CHARS} characters."
            )
        closed.append(ClosedDays(first, last, label))
    return closed


def is_open(schedule: Schedule, instant: datetime) -> bool:
    """Whether the schedule is open at `instant` (an aware datetime)."""
    if instant.tzinfo is None:
        raise ValueError("an instant is an aware datetime")
    local = instant.astimezone(schedule.zone)
    if schedule.closed_on(local.date()):
        return False
    minute = local.hour * 60 + local.minute
    return any(start <= minute < end for start, end in schedule.weekly[local.weekday()])


# How many days `next_change` reads at once: a week, and a day on either side.
_CHUNK_DAYS = 7
_LAST_DAY = date(LAST_YEAR + 1, 12, 31)


def next_change(schedule: Schedule, instant: datetime) -> datetime | None:
    """The first instant after `instant` at which the schedule opens or closes (in UTC);
    None when it never will (no opening hours, or open at all hours and no closed day
    ahead)."""
    if schedule.never_open:
        return None
    state = is_open(schedule, instant)
    # The day before: where a clock goes back over midnight, its last hour comes again.
    day: date | None = instant.astimezone(schedule.zone).date() - timedelta(days=1)
    while day is not None and day < _LAST_DAY:
        day = _skip_unchanging_days(schedule, state, day)
        if day is None:
            return None
        found = _change_within(schedule, state, instant, day)
        if found is not None:
            return found
        day += timedelta(days=_CHUNK_DAYS)
    return None


def _skip_unchanging_days(schedule: Schedule, state: bool, day: date) -> date | None:
    """Where the next days cannot change the state, the day to look from instead (the
    day before the change can come); None when it never comes. Everything up to the
    start of `day + 1` is known to be in `state`."""
    if not state:
        last_closed = schedule.closed_until(day + timedelta(days=1))
        if last_closed is not None and (last_closed - day).days > _CHUNK_DAYS:
            return last_closed - timedelta(days=1)
        return day
    if schedule.open_all_week:
        first_closed = schedule.next_closed_after(day)
        if first_closed is None:
            return None
        if (first_closed - day).days > _CHUNK_DAYS:
            return first_closed - timedelta(days=2)
    return day


def _instants_at(zone: ZoneInfo, day: date, minute: int) -> set[datetime]:
    """The instants whose wall clock reads `minute` of `day` (two in a repeated hour; in
    a skipped hour, the instants either offset gives, near the skip)."""
    wall = datetime.combine(day, time(minute // 60, minute % 60))
    return {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}


def _change_within(
    schedule: Schedule, state: bool, instant: datetime, day: date
) -> datetime | None:
    """The first change after `instant` and before the start of `day + 8`, reading the
    wall-clock boundaries of `day` to `day + 8` and the zone's offset changes between."""
    zone = schedule.zone
    days = [day + timedelta(days=i) for i in range(_CHUNK_DAYS + 2)]
    found: set[datetime] = set()
    for d in days:
        for minute in schedule._walls[d.weekday()]:
            found |= _instants_at(zone, d, minute)
    limit = min(_instants_at(zone, days[-1], 0))
    ordered = sorted(found)
    # The state can also change where the offset does: a clock jumping into or out of
    # an interval, or back over its start.
    for a, b in pairwise(list(ordered)):
        if a.astimezone(zone).utcoffset() != b.astimezone(zone).utcoffset():
            ordered.append(_offset_change(zone, a, b))
    for candidate in sorted(ordered):
        if candidate >= limit:
            return None
        if candidate > instant and is_open(schedule, candidate) != state:
            return candidate
    return None


def _offset_change(zone: ZoneInfo, a: datetime, b: datetime) -> datetime:
    """The first whole second after `a`, up to `b`, on `b`'s offset."""
    after = b.astimezone(zone).utcoffset()
    low, high = 0, int((b - a).total_seconds())
    while high - low > 1:
        mid = (low + high) // 2
        if (a + timedelta(seconds=mid)).astimezone(zone).utcoffset() == after:
            high = mid
        else:
            low = mid
    return a + timedelta(seconds=high)


# --------------------------------------------------------------------------- away periods


@dataclass(frozen=True, slots=True)
class AwayPeriod:
    """A span of time someone is away: from `start`, until `until` (UTC, half-open)."""

    start: datetime
    until: datetime

    def holds(self, instant: datetime) -> bool:
        return self.start <= instant < self.until

    def as_json(self) -> dict[str, str]:
        return {"from": format_instant(self.start), "until": format_instant(self.until)}


class NotAnInstant(ValueError):
    """What is wrong with a value given as an instant; `str()` is the sentence."""


def read_instant(value: object) -> datetime:
    """An RFC 3339 instant with its offset (a string, or an aware datetime), in UTC and
    in the years FIRST_YEAR to LAST_YEAR; NotAnInstant otherwise."""
    not_rfc3339 = "an instant is RFC 3339, e.g. 2026-12-24T17:00:00-05:00."
    out_of_years = f"an instant falls in the years {FIRST_YEAR} to {LAST_YEAR}."
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise NotAnInstant(not_rfc3339) from None
    else:
        raise NotAnInstant(not_rfc3339)
    if moment.tzinfo is None:
        raise NotAnInstant("an instant names its offset (Z or ±HH:MM).")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise NotAnInstant(out_of_years) from None
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise NotAnInstant(out_of_years)
    return moment


def _instant(value: object, field_path: str) -> datetime:
    try:
        return read_instant(value)
    except NotAnInstant as exc:
        raise invalid_field(field_path, str(exc)) from None


def parse_away(data: object, field_path: str = "away") -> tuple[AwayPeriod, ...]:
    """Away periods from `[{from, until}]` (RFC 3339 instants), each ending after it
    starts; a 422 naming the field otherwise."""
    if data is None:
        return ()
    periods = []
    for at, item in _objects(data, field_path, ("from", "until"), MAX_AWAY_PERIODS):
        start = _instant(item.get("from"), f"{at}.from")
        until = _instant(item.get("until"), f"{at}.until")
        if until <= start:
            raise invalid_field(f"{at}.until", "an away period ends after it starts.")
        periods.append(AwayPeriod(start, until))
    return tuple(sorted(periods, key=lambda p: (p.start, p.until)))


def away_at(periods: Sequence[AwayPeriod], instant: datetime) -> bool:
    """Whether one of the away periods holds at `instant`."""
    return any(p.holds(instant) for p in periods)


# --------------------------------------------------------------------------- quiet hours


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span of local time, `start` to `end` (minutes); through midnight when
    `end` comes before `start` (21:00 to 08:00)."""

    start: int
    end: int

    def as_json(self) -> dict[str, str]:
        return {"start": _clock(self.start), "end": _clock(self.end)}

    def schedule(self, timezone: str) -> Schedule:
        """The quiet hours in a time zone as a schedule open while they hold, so that
        `is_open` says whether they hold and `next_change` when they end."""
        if self.start < self.end:
            day: list[Interval] = [(self.start, self.end)]
        else:
            day = [(0, self.end)] if self.end else []
            day.append((self.start, MINUTES_PER_DAY))
        return make_schedule(timezone, [day] * len(WEEKDAYS))


def parse_quiet_hours(data: object, field_path: str = "quiet_hours") -> QuietHours | None:
    """Quiet hours from `{start, end}` ("HH:MM", different; through midnight when end
    comes first), or None; a 422 naming the field otherwise."""
    if data is None:
        return None
    if not isinstance(data, Mapping) or set(data) - {"start", "end"}:
        raise invalid_field(field_path, 'quiet hours are {start: "HH:MM", end: "HH:MM"} or null.')
    start = _minutes(data.get("start"), f"{field_path}.start")
    end = _minutes(data.get("end"), f"{field_path}.end")
    for value, name in ((start, "start"), (end, "end")):
        if value == MINUTES_PER_DAY:
            raise invalid_field(f"{field_path}.{name}", "use 00:00 for midnight.")
    if start == end:
        raise invalid_field(f"{field_path}.end", "quiet hours end at another time than they start.")
    return QuietHours(start, end)
