"""Request and response shapes for organizations, users, groups, numbers and routing."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import Page, Request
from app.vocabulary import (
    CLOCK_TIME_PATTERN,
    DATE_PATTERN,
    MAX_AWAY_PERIODS,
    MAX_BODY_CHARS,
    MAX_CLOSED_PERIODS,
    MAX_INTERVALS_PER_DAY,
    MAX_LABEL_CHARS,
    Weekday,
)

Username = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    ),
    Field(description="Letters, digits, '.', '_' or '-'; case-insensitive.", examples=["alice"]),
]
ExtensionStr = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{1,10}$"),
    Field(
        description="Digits, unique among the organization's users and groups.", examples=["101"]
    ),
]
PhoneInput = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=40),
    Field(description="Any format; stored as E.164.", examples=["+14155552671"]),
]
Role = Literal["admin", "member"]


class OrganizationCreate(Request):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    admin_username: Username


ClockTime = Annotated[
    str,
    Field(
        pattern=CLOCK_TIME_PATTERN,
        description="Wall-clock time, 'HH:MM' on a 24-hour clock.",
        examples=["08:30"],
    ),
]
TimezoneName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    Field(description="An IANA time zone name.", examples=["America/New_York"]),
]


DayStr = Annotated[
    str,
    Field(pattern=DATE_PATTERN, json_schema_extra={"format": "date"}, examples=["2026-12-25"]),
]


class ClosedDays(Request):
    """Whole local days closed, `from` to `to` included."""

    from_: DayStr = Field(alias="from")
    to: DayStr
    label: Annotated[str, StringConstraints(max_length=MAX_LABEL_CHARS)] | None = Field(
        default=None, examples=["Christmas"]
    )


class Schedule(Request):
    """Opening hours: open at an instant when, in `timezone`, it falls inside an interval
    of its weekday and on no closed day. Intervals are `[start, end)`; "24:00" may end
    one; a night opening is split at midnight (`["22:00", "24:00"]` on one day,
    `["00:00", "06:00"]` on the next)."""

    timezone: TimezoneName | None = Field(
        default=None, description="An IANA name; default: the organization's time zone."
    )
    weekly: dict[
        Weekday,
        Annotated[list[tuple[ClockTime, ClockTime]], Field(max_length=MAX_INTERVALS_PER_DAY)],
    ] = Field(
        default_factory=dict,
        description="Open intervals by day; a day not listed is closed.",
        examples=[{"mon": [["08:00", "12:00"], ["13:00", "17:00"]], "sat": [["09:00", "12:00"]]}],
    )
    closed: list[ClosedDays] = Field(default_factory=list, max_length=MAX_CLOSED_PERIODS)


class ClosedDaysOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    label: str | None


class ScheduleOut(BaseModel):
    timezone: str
    weekly: dict[str, list[tuple[str, str]]]
    closed: list[ClosedDaysOut]


class AwayPeriod(Request):
    from_: AwareDatetime = Field(alias="from", examples=["2026-12-24T12:00:00-05:00"])
    until: AwareDatetime = Field(examples=["2027-01-02T08:00:00-05:00"])


class AwayPeriodOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    until: datetime


class QuietHours(Request):
    """A daily span of local time; through midnight when `end` comes before `start`."""

    start: ClockTime = Field(examples=["21:00"])
    end: ClockTime = Field(examples=["08:00"])


class QuietHoursOut(BaseModel):
    start: str
    end: str


class OrganizationUpdate(Request):
    name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
        | None
    ) = None
    help_text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY_CHARS)] | None = (
        Field(default=None, description="The HELP reply; null goes back to the default.")
    )
    timezone: TimezoneName | None = None
    quiet_hours: QuietHours | None = Field(default=None, description="Null: no quiet hours.")


class OrganizationOut(BaseModel):
    id: uuid.UUID
    name: str
    help_text: str = Field(description="The HELP reply as sent (the default until set).")
    help_text_is_default: bool
    timezone: str = Field(examples=["America/New_York"])
    quiet_hours: QuietHoursOut | None


class UserRef(BaseModel):
    id: uuid.UUID
    username: str


class OrganizationCreated(BaseModel):
    id: uuid.UUID
    name: str
    admin: UserRef
    admin_token: str


class UserCreate(Request):
    username: Username
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    role: Role = "member"
    extension: ExtensionStr | None = None
    sms_enabled: bool = False


class UserUpdate(Request):
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    role: Role | None = None
    extension: ExtensionStr | None = None
    sms_enabled: bool | None = None
    outbound_sms_number: PhoneInput | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    display_name: str | None
    role: Role
    extension: str | None
    sms_enabled: bool
    outbound_sms_number: str | None
    created_at: datetime
    updated_at: datetime
    # Set while the user is deactivated (listed with `include_deactivated=true`).
    deactivated_at: datetime | None = None


class TokenCreate(Request):
    name: Annotated[str, StringConstraints(max_length=200)] | None = None


class TokenCreated(BaseModel):
    id: uuid.UUID
    token: str = Field(description="Shown once; only its hash is stored.")
    created_at: datetime


class GroupCreate(Request):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    extension: ExtensionStr
    members: list[Username] = Field(default_factory=list, max_length=1000)
    outbound_sms_number: PhoneInput | None = None


class GroupUpdate(Request):
    name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
        | None
    ) = None
    extension: ExtensionStr | None = None
    members: list[Username] | None = Field(default=None, max_length=1000)
    outbound_sms_number: PhoneInput | None = None


class GroupOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    extension: str | None
    members: list[str] = Field(validation_alias="member_usernames")
    outbound_sms_number: str | None
    created_at: datetime
    updated_at: datetime


class PhoneNumberCreate(Request):
    number: PhoneInput
    # Required: left out, a newcomer's number would be routed to no one without a word.
    # Null says so on purpose: its texts are kept unrouted (`GET /v1/routing/check`).
    sms_extension: ExtensionStr | None = Field(
        description="The extension whose user or group gets the number's texts; null: "
        "no one (they are kept unrouted, and `GET /v1/routing/check` lists the number).",
        examples=["101"],
    )


class PhoneNumberUpdate(Request):
    sms_extension: ExtensionStr | None


class PhoneNumberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    number: str
    sms_extension: str | None
    created_at: datetime
    updated_at: datetime


class RoutingProblem(BaseModel):
    code: str = Field(examples=["outbound_number_routes_elsewhere"])
    message: str
    subject_type: Literal["user", "group", "phone_number"]
    subject_id: uuid.UUID
    subject: str = Field(description="A username, group name or phone number.")


class RoutingCheck(BaseModel):
    ok: bool
    problems: list[RoutingProblem]


class AutoResponder(Request):
    enabled: bool
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY_CHARS)]
    schedule: Schedule | None = Field(
        default=None,
        description="Answer only while this schedule is closed (or an away period holds); "
        "null: at all hours.",
    )
    away: list[AwayPeriod] = Field(
        default_factory=list,
        max_length=MAX_AWAY_PERIODS,
        description="Periods the user is away: the responder answers during them even "
        "while the schedule is open (without a schedule it answers at all hours anyway).",
    )


class AutoResponderOut(BaseModel):
    enabled: bool
    text: str
    schedule: ScheduleOut | None
    away: list[AwayPeriodOut]


class AfterHours(Request):
    enabled: bool
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY_CHARS)]
    schedule: Schedule = Field(
        description="The group's hours: the reply is sent while this schedule is closed."
    )


class AfterHoursOut(BaseModel):
    enabled: bool
    text: str
    schedule: ScheduleOut | None = Field(description="Null: the group has no after-hours reply.")


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    actor: str
    action: str
    target_type: str
    target_id: str | None
    changes: dict[str, object]
    created_at: datetime


class UserPage(Page[UserOut]):
    """A page of users."""


class GroupPage(Page[GroupOut]):
    """A page of groups."""


class PhoneNumberPage(Page[PhoneNumberOut]):
    """A page of phone numbers."""


class AuditEntryPage(Page[AuditEntryOut]):
    """A page of audit entries: audit entries, newest first."""
