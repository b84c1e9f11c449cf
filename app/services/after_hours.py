"""A group's after-hours reply: the one automatic reply a group's texts may get, sent
while the group's schedule is closed (API.md, "Group after-hours reply").

Its settings and when it answers live here. Whether a message gets it is the
auto-responder's rule (`auto_responder.auto_reply_block`: the same exclusions, the same
window); it goes from the number the group's replies go from (`outbound_numbers`). A
group has none until an admin sets one (`schedule` None): its texts then record
`group_recipient`, as before.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.models import Group, Organization, utcnow
from app.services import audit, groups
from app.services.schedules import Schedule, is_open, parse_schedule
from app.services.sealing import open_after_hours, seal_after_hours


@dataclass(frozen=True, slots=True)
class AfterHoursReply:
    enabled: bool
    text: str
    # None: the group has no after-hours reply.
    schedule: Schedule | None

    def active(self, at: datetime) -> bool:
        """Whether it answers at `at`: while its schedule is closed."""
        return self.schedule is not None and not is_open(self.schedule, at)

    def as_dict(self) -> dict[str, Any]:
        """The settings as the API shows them."""
        return {
            "enabled": self.enabled,
            "text": self.text,
            "schedule": self.schedule.as_json() if self.schedule else None,
        }


def stored_after_hours(keyring: Keyring, group: Group) -> AfterHoursReply | None:
    """A group's after-hours reply as stored; None when it has none."""
    if group.after_hours_schedule is None:
        return None
    return AfterHoursReply(
        group.after_hours_enabled,
        open_after_hours(keyring, group.id, group.after_hours_ciphertext),
        parse_schedule(group.after_hours_schedule),
    )


async def get_after_hours(
    keyring: Keyring, session: AsyncSession, org_id: uuid.UUID, group_id: uuid.UUID
) -> AfterHoursReply:
    """A group's after-hours reply (disabled, no text, no schedule when never set)."""
    group = await groups.get_group(session, org_id, group_id)
    return stored_after_hours(keyring, group) or AfterHoursReply(False, "", None)


async def set_after_hours(
    keyring: Keyring,
    session: AsyncSession,
    org_id: uuid.UUID,
    actor: str,
    group_id: uuid.UUID,
    *,
    enabled: bool,
    text: str,
    schedule: dict[str, Any],
) -> AfterHoursReply:
    """Replace a group's after-hours reply; a schedule without a time zone takes the
    organization's. A 422 names a bad field of the schedule."""
    group = await groups.get_group(session, org_id, group_id)
    org = await session.get(Organization, org_id)
    assert org is not None
    parsed = parse_schedule(schedule, "schedule", default_timezone=org.timezone)
    group.after_hours_enabled = enabled
    group.after_hours_ciphertext = seal_after_hours(keyring, group.id, text)
    group.after_hours_schedule = parsed.as_json()
    group.updated_at = utcnow()
    audit.record(
        session,
        org_id=org_id,
        actor=actor,
        action="group.after_hours.set",
        target_type="group",
        target_id=group.id,
        changes={"enabled": enabled, "schedule": group.after_hours_schedule},
    )
    await session.commit()
    return AfterHoursReply(enabled, text, parsed)
