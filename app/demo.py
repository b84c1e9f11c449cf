"""Demo data and the command-line tasks that work on the database directly."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.bootstrap import build_keyring
from app.crypto import Keyring
from app.db import create_engine, create_sessionmaker
from app.migrate import upgrade_to_head
from app.models import Organization, User, utcnow
from app.services import (
    after_hours,
    auto_responder,
    contacts,
    conversations,
    groups,
    organizations,
    phone_numbers,
    users,
)
from app.services.auth import Principal
from app.services.message_rows import delivery_job_for, new_message, outbound_message
from app.services.notes import write_note
from app.services.phone import fictional_number
from app.settings import Settings
from app.vocabulary import DEFAULT_TIMEZONE

DEMO_ORG = "Demo Clinic"
WEEKDAYS_8_TO_5 = {day: [["08:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}


@dataclass(frozen=True)
class DemoBanner:
    base_url: str
    admin_token: str
    member_token: str
    numbers: dict[str, str]
    # Which carrier, database and Redis this process uses (Settings.describe).
    setup: str
    simulator: bool


async def run_with_demo_data(settings: Settings, host: str, port: int) -> DemoBanner:
    """Migrate, create the demo clinic once, and mint fresh tokens to try the API with."""
    await upgrade_to_head(settings.effective_database_url)
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            org = await session.scalar(select(Organization).where(Organization.name == DEMO_ORG))
            if org is None:
                created = await organizations.create_organization(
                    session, name=DEMO_ORG, admin_username="alice", actor="demo"
                )
                org_id = created.org.id
                await _populate(build_keyring(settings), session, org_id, created.admin.id)
            else:
                org_id = org.id
            by_name = {
                u.username: u
                for u in (await session.scalars(select(User).where(User.org_id == org_id))).all()
            }
            _, admin_token = await users.create_token(
                session, org_id, "demo", by_name["alice"].id, "demo"
            )
            _, member_token = await users.create_token(
                session, org_id, "demo", by_name["bob"].id, "demo"
            )
    finally:
        await engine.dispose()
    return DemoBanner(
        base_url=f"http://{host}:{port}",
        admin_token=admin_token,
        member_token=member_token,
        numbers={
            "alice (ext 101; auto-reply outside weekdays 8-5)": fictional_number(1),
            "bob (ext 102)": fictional_number(2),
            "front desk group (ext 200; after-hours reply)": fictional_number(3),
        },
        setup=settings.describe(),
        simulator=settings.carrier == "simulator",
    )


async def _populate(
    keyring: Keyring, session: AsyncSession, org_id: uuid.UUID, admin_id: uuid.UUID
) -> None:
    actor = "demo"
    await users.update_user(
        session, org_id, actor, admin_id, {"extension": "101", "display_name": "Alice Admin"}
    )
    bob = await users.create_user(
        session,
        org_id,
        actor,
        username="bob",
        display_name="Bob Nurse",
        role="member",
        extension="102",
        sms_enabled=True,
    )
    carol = await users.create_user(
        session,
        org_id,
        actor,
        username="carol",
        display_name="Carol Reception",
        role="member",
        extension="103",
        sms_enabled=True,
    )
    await phone_numbers.add_phone_number(
        session, org_id, actor, number=fictional_number(1), sms_extension="101"
    )
    await phone_numbers.add_phone_number(
        session, org_id, actor, number=fictional_number(2), sms_extension="102"
    )
    await phone_numbers.add_phone_number(
        session, org_id, actor, number=fictional_number(3), sms_extension="200"
    )
    await users.update_user(
        session,
        org_id,
        actor,
        admin_id,
        {"sms_enabled": True, "outbound_sms_number": fictional_number(1)},
    )
    await users.update_user(
        session, org_id, actor, bob.id, {"outbound_sms_number": fictional_number(2)}
    )
    await auto_responder.set_auto_responder(
        keyring,
        session,
        org_id,
        actor,
        bob.id,
        enabled=True,
        text="Thanks for your message. The clinic will reply during opening hours.",
    )
    # Alice's auto-responder answers outside her hours (weekdays 8 to 5, in the
    # organization's time zone) and on the next Christmas Day.
    await auto_responder.set_auto_responder(
        keyring,
        session,
        org_id,
        actor,
        admin_id,
        enabled=True,
        text="Alice is away: the office is open weekdays 8am to 5pm. For emergencies call 911.",
        schedule={"weekly": WEEKDAYS_8_TO_5, "closed": [_next_christmas()]},
    )
    desk = await groups.create_group(
        session,
        org_id,
        actor,
        name="Front Desk",
        extension="200",
        members=["bob", "carol"],
        outbound_sms_number=fictional_number(3),
    )
    await after_hours.set_after_hours(
        keyring,
        session,
        org_id,
        actor,
        desk.id,
        enabled=True,
        text="The front desk is closed. We open weekdays at 8am, Saturdays at 9am. "
        "For emergencies call 911.",
        schedule={"weekly": {**WEEKDAYS_8_TO_5, "sat": [["09:00", "12:00"]]}},
    )
    await _shared_inbox(keyring, session, org_id, desk.id, bob, carol)
    await _scheduled_reminder(keyring, session, org_id, bob)


def _next_christmas() -> dict[str, str]:
    today = utcnow().date()
    day = date(today.year, 12, 25)
    day = day if day >= today else date(today.year + 1, 12, 25)
    return {"from": day.isoformat(), "to": day.isoformat(), "label": "Christmas Day"}


async def _shared_inbox(
    keyring: Keyring,
    session: AsyncSession,
    org_id: uuid.UUID,
    group_id: uuid.UUID,
    bob: User,
    carol: User,
) -> None:
    """A patient in the address book who texted the front desk: the conversation is
    assigned to bob, and carol left a note on it."""
    patient = fictional_number(10, "212")
    desk = fictional_number(3)
    carol_principal = Principal(carol.id, org_id, carol.username, carol.role, token_hash="")
    await contacts.create_contact(
        keyring, session, carol_principal, phone_number=patient, name="Maria Gonzalez"
    )
    now = utcnow()
    conv = await conversations.touch(
        session,
        org_id=org_id,
        key=conversations.group_conversation_key(group_id, patient),
        kind="sms",
        at=now,
        owner_group_id=group_id,
        external_number=patient,
        inbound_to_number=desk,
    )
    text = new_message(
        keyring,
        org_id=org_id,
        conversation_id=conv.id,
        direction="inbound",
        body="Hi, can I move my appointment to Thursday morning?",
        status="received",
        group_id=group_id,
        from_number=patient,
        to_number=desk,
        carrier="simulator",
        carrier_message_id=f"demo-{conv.id}",
        auto_reply_decision={"sent": False, "reason": "group_recipient"},
        at=now,
    )
    session.add(text.orm())
    conv.assignee_user_id = bob.id
    write_note(
        keyring,
        session,
        conv,
        carol.id,
        carol.username,
        "She prefers mornings; Dr. Patel has 9:30 free on Thursday.",
    )
    await session.commit()


async def _scheduled_reminder(
    keyring: Keyring, session: AsyncSession, org_id: uuid.UUID, bob: User
) -> None:
    """Bob's reminder to Maria, scheduled for 9am tomorrow in the organization's zone:
    `GET /v1/messages?status=scheduled` with bob's token lists it until it goes."""
    patient = fictional_number(10, "212")
    zone = ZoneInfo(DEFAULT_TIMEZONE)
    tomorrow = datetime.now(zone).date() + timedelta(days=1)
    send_at = datetime.combine(tomorrow, time(9, 0), tzinfo=zone).astimezone(UTC)
    now = utcnow()
    conv = await conversations.touch(
        session,
        org_id=org_id,
        key=conversations.user_conversation_key(bob.id, patient),
        kind="sms",
        at=now,
        owner_user_id=bob.id,
        external_number=patient,
    )
    assert bob.outbound_sms_number is not None
    reminder = outbound_message(
        keyring,
        org_id=org_id,
        conversation_id=conv.id,
        body="Hi Maria, a reminder of your appointment with Dr. Patel on Thursday at "
        "9:30. Reply to this message to reschedule.",
        from_number=bob.outbound_sms_number,
        to_number=patient,
        sender=bob,
        send_at=send_at,
        at=now,
    )
    session.add(reminder.orm())
    session.add(delivery_job_for(reminder).orm())
    await session.commit()


def print_demo_banner(banner: DemoBanner) -> None:
    """Tell a newcomer where to click and which token to use."""
    print(f"""
Messaging service ({banner.setup})

  API docs:      {banner.base_url}/docs
  Admin token:   {banner.admin_token}   (alice, admin, ext 101)
  Member token:  {banner.member_token}   (bob, member, ext 102)

  Try:  curl -H 'Authorization: Bearer {banner.member_token}' {banner.base_url}/v1/me
""")
    for who, number in banner.numbers.items():
        print(f"  {number} routes to {who}")
    if banner.simulator:
        auth = f"-H 'Authorization: Bearer {banner.member_token}'"
        print(f"""
  Watch bob's live events (in another terminal):
    curl -N {auth} {banner.base_url}/v1/events
  Text bob as a patient would (simulator carrier):
    curl -X POST {auth} -H 'content-type: application/json' {banner.base_url}/v1/simulator/inbound \\
      -d '{{"from_number": "{fictional_number(11, "212")}", "to_number": "{fictional_number(2)}", "text": "Hello"}}'
  What the simulator carrier sent (bob's auto-reply):
    curl {auth} {banner.base_url}/v1/simulator/sent""")
    print(flush=True)


async def create_org_cli(settings: Settings, name: str, admin_username: str) -> str:
    """Create an organization from the command line; returns the admin token."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            created = await organizations.create_organization(
                session, name=name, admin_username=admin_username.lower(), actor="cli"
            )
            return created.admin_token
    finally:
        await engine.dispose()


async def reencrypt_cli(settings: Settings) -> int:
    """Re-encrypt every body not under the newest key; returns how many changed."""
    from app.services.key_rotation import reencrypt_bodies

    engine = create_engine(settings)
    try:
        return await reencrypt_bodies(create_sessionmaker(engine), build_keyring(settings))
    finally:
        await engine.dispose()
