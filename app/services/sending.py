"""Sending: messages to colleagues and SMS to phone numbers (`send_messages`), and
replies in a conversation (`reply`). All or nothing: every recipient is checked before
anything is stored; the outbox row of each SMS is written in the same transaction as
the message, and the delivery worker hands it to the carrier."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.crypto import Keyring
from app.errors import Conflict, Invalid, MmsNotSupported, NotFound, TooManyRecipients
from app.ids import new_id
from app.models import Group, IdempotencyRecord, Organization, User, utcnow
from app.models.rows import ConversationRow, MessageRow
from app.security import hash_token
from app.services import conversations, opt_out, scheduling, send_store
from app.services.auth import Principal, authenticate_user
from app.services.message_rows import (
    delivery_job_for,
    internal_message,
    outbound_message,
    render_message,
)
from app.services.outbound_numbers import GroupNumbers, ensure_owned, outbound_number_for
from app.services.phone import InvalidPhoneNumber, is_textable_destination, normalize_e164
from app.services.publishing import publish
from app.services.routing import Address, resolve_recipients
from app.services.schedules import parse_quiet_hours
from app.services.sealing import open_response, seal_response
from app.vocabulary import DEFAULT_TIMEZONE, MAX_BODY_CHARS


def check_body(body: str, media: list[str] | None) -> None:
    if media:
        raise MmsNotSupported(
            "Media (MMS) cannot be sent: send text and links only.",
            details={"media_count": len(media)},
        )
    if not body.strip():
        raise Invalid("The message body is empty.", code="empty_body", details=[{"field": "body"}])
    if len(body) > MAX_BODY_CHARS:
        raise Invalid(
            f"The message body is {len(body)} characters; at most {MAX_BODY_CHARS} are allowed.",
            code="body_too_long",
            details=[{"field": "body", "max_length": MAX_BODY_CHARS}],
        )


async def _load_sender(session: AsyncSession, principal: Principal) -> User:
    sender = await session.get(User, principal.user_id)
    if sender is None or sender.deactivated_at is not None:
        raise NotFound("The sender no longer exists.", code="user_not_found")
    return sender


def _request_hash(
    addresses: Sequence[Address], body: str, media: list[str] | None, send_at: str | None
) -> str:
    request: dict[str, Any] = {
        "to": [asdict(a) for a in addresses],
        "body": body,
        "media": media or [],
    }
    if send_at is not None:
        # Only when given: the requests stored before scheduling existed hash as they did.
        request["send_at"] = send_at
    canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


async def _idempotent_replay(
    keyring: Keyring, session: AsyncSession, principal: Principal, key: str, request_hash: str
) -> dict[str, Any] | None:
    record = await session.get(IdempotencyRecord, (principal.org_id, principal.user_id, key))
    if record is None:
        return None
    if record.request_hash != request_hash:
        raise Invalid(
            "This Idempotency-Key was used with a different request.",
            code="idempotency_key_reused",
        )
    return open_response(
        keyring, principal.org_id, principal.user_id, key, record.response_ciphertext
    )


def check_recipient_count(count: int, max_recipients: int) -> None:
    """Refuse a send that would reach more than `max_recipients` parties (422
    `too_many_recipients`): the work one request may cause is bounded."""
    if count > max_recipients:
        raise TooManyRecipients(
            f"A send reaches at most {max_recipients} recipients; this one would reach "
            f"{count}. Nothing was sent.",
            details={"recipients": count, "max_recipients": max_recipients},
        )



def _store(session: AsyncSession, rows: Sequence[MessageRow]) -> None:
    """The messages, and the outbox row of each SMS in the same transaction."""
    session.add_all([row.orm() for row in rows])
    session.add_all([delivery_job_for(r).orm() for r in rows if r.direction == "outbound"])


async def send(
    ctx: AppContext,
    token: str,
    addresses: Sequence[Address],
    body: str,
    media: list[str] | None,
    idempotency_key: str | None = None,
    send_at: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """`POST /v1/messages` for the holder of `token`: the most frequent send (one text to
    one phone number, now) in one statement on PostgreSQL (`send_store`), any other
    through `send_messages`. Both follow the same rules; the fast one leaves anything
    unusual (an error to explain, a fact that moved twice, a time to send at) to the
    general one."""
    if (
        idempotency_key is None
        and send_at is None
        and not media
        and len(addresses) == 1
        and addresses[0].phone_number
        and ctx.engine.dialect.name == "postgresql"
    ):
        sent = await _send_to_one_number(ctx, token, addresses[0].phone_number, body)
        if sent is not None:
            return 201, sent
    async with ctx.sessionmaker() as session:
        principal = await authenticate_user(session, token)
        return await send_messages(
            ctx, session, principal, addresses, body, media, idempotency_key, send_at
        )


async def _send_to_one_number(
    ctx: AppContext, token: str, raw_number: str, body: str
) -> dict[str, Any] | None:
    """The one-statement send; None when the general path must answer instead."""
    try:
        number = normalize_e164(raw_number)
    except InvalidPhoneNumber:
        return None
    if not is_textable_destination(number):
        return None
    digest = hash_token(token)
    for _ in range(2):
        sender = ctx.senders.get(digest) or await send_store.load_sender(ctx, digest)
        if sender is None or not sender.sms_enabled or not sender.outbound_sms_number:
            return None
        check_body(body, None)
        principal = sender.principal
        now = utcnow()
        conversation = ConversationRow(
            id=new_id(),
            org_id=principal.org_id,
            kind="sms",
            key=conversations.user_conversation_key(principal.user_id, number),
            last_message_at=now,
            created_at=now,
            owner_user_id=principal.user_id,
            external_number=number,
        )
        message = outbound_message(
            ctx.keyring,
            org_id=principal.org_id,
            conversation_id=conversation.id,
            body=body,
            # The sender's own number: it cannot be released while it is theirs (a
            # foreign key), and the worker checks again when it sends.
            from_number=sender.outbound_sms_number,
            to_number=number,
            sender=SenderRef(principal.user_id, principal.username),
            # The message and its conversation's activity share one instant (the
            # inbox's cursors rely on it).
            at=now,
        )
        stored = await send_store.store_send(
            ctx, sender, number, conversation, message, delivery_job_for(message)
        )
        if stored.conversation_id is not None:
            message.conversation_id = stored.conversation_id
            await publish(
                ctx,
                None,
                "message.created",
                [message],
                audience=(str(principal.user_id),),
                bodies=[body],
            )
            ctx.wake_worker()
            return {"messages": [render_message(ctx.keyring, message, body)]}
        ctx.senders.pop(digest)
        if not stored.token_ok or stored.opted_out:
            return None
    return None


@dataclass(frozen=True, slots=True)
class SenderRef:
    """Who sends, as the message records it."""

    id: uuid.UUID
    username: str


async def send_messages(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    addresses: Sequence[Address],
    body: str,
    media: list[str] | None,
    idempotency_key: str | None = None,
    send_at: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Send one message per party (users, group members, phone numbers); all or nothing.
    An SMS goes now, or at `send_at` (phone numbers only), or when the organization's
    quiet hours end for its recipient (`scheduling`): stored `scheduled` until then.

    Returns the HTTP status and body, so that a repeat with the same Idempotency-Key
    gets exactly the first response.
    """
    request_hash = _request_hash(addresses, body, media, send_at)
    if idempotency_key:
        replay = await _idempotent_replay(
            ctx.keyring, session, principal, idempotency_key, request_hash
        )
        if replay is not None:
            return 201, replay
    now = utcnow()
    requested = scheduling.parse_send_at(send_at, now) if send_at is not None else None
    if requested is not None:
        scheduling.ensure_schedulable(addresses)
    check_body(body, media)
    max_recipients = ctx.settings.max_recipients_per_send
    # A list longer than the cap is refused before each of its addresses is looked up.
    check_recipient_count(len(addresses), max_recipients)
    sender = await _load_sender(session, principal)
    parties = await resolve_recipients(session, sender, addresses)
    check_recipient_count(len(parties), max_recipients)
    # One unit per message: the request paid one at the edge (app.rate_limits).
    if len(parties) > 1:
        await ctx.api_limits.charge(principal.token_hash, len(parties) - 1)
    when = await _send_times(session, sender.org_id, requested, now, fan_out=len(parties) > 1)
    created: list[MessageRow] = []
    for party in parties:
        if party.user is not None:
            conv = await conversations.touch(
                session,
                org_id=sender.org_id,
                kind="internal",
                key=conversations.internal_conversation_key(sender.id, party.user.id),
                at=now,
                users=(sender.id, party.user.id),
            )
            created.append(
                internal_message(
                    ctx.keyring,
                    org_id=sender.org_id,
                    conversation_id=conv.id,
                    sender=sender,
                    recipient_username=party.user.username,
                    body=body,
                    at=now,
                )
            )
        else:
            assert party.number is not None
            conv = await conversations.touch(
                session,
                org_id=sender.org_id,
                kind="sms",
                key=conversations.user_conversation_key(sender.id, party.number),
                at=now,
                owner_user_id=sender.id,
                external_number=party.number,
            )
            created.append(
                outbound_message(
                    ctx.keyring,
                    org_id=sender.org_id,
                    conversation_id=conv.id,
                    body=body,
                    # The user's own number: it cannot be released while it is theirs (a
                    # foreign key), and the worker checks again when it sends.
                    from_number=outbound_number_for(sender=sender),
                    to_number=party.number,
                    sender=sender,
                    send_at=when(party.number),
                    at=now,
                )
            )
    _store(session, created)
    response = {"messages": [render_message(ctx.keyring, m) for m in created]}
    if idempotency_key:
        session.add(
            IdempotencyRecord(
                org_id=principal.org_id,
                user_id=principal.user_id,
                key=idempotency_key,
                request_hash=request_hash,
                response_status=201,
                response_ciphertext=seal_response(
                    ctx.keyring, principal.org_id, principal.user_id, idempotency_key, response
                ),
            )
        )
    try:
        await session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won: answer as it did.
        await session.rollback()
        if idempotency_key:
            replay = await _idempotent_replay(
                ctx.keyring, session, principal, idempotency_key, request_hash
            )
            if replay is not None:
                return 201, replay
        raise
    await publish(ctx, session, "message.created", created)
    ctx.wake_worker()
    return 201, response


async def _send_times(
    session: AsyncSession,
    org_id: uuid.UUID,
    requested: datetime | None,
    now: datetime,
    *,
    fan_out: bool,
) -> Callable[[str], datetime | None]:
    """When each SMS of a send goes, by its recipient's number (`scheduling.send_time`):
    the organization's quiet hours are read only for a send they may hold."""
    if requested is None and not fan_out:
        return lambda _number: None
    org = await session.get(Organization, org_id)
    quiet = parse_quiet_hours(org.quiet_hours) if org else None
    zone = org.timezone if org else DEFAULT_TIMEZONE
    return lambda number: scheduling.send_time(
        number, requested, now=now, fan_out=fan_out, quiet=quiet, organization_zone=zone
    )


async def reply(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    body: str,
    media: list[str] | None,
) -> dict[str, Any]:
    """Reply in a conversation, from the number the routing rules pick."""
    conv = await conversations.get_visible(session, principal, conversation_id)
    check_body(body, media)
    sender = await _load_sender(session, principal)
    if conv.kind == "internal":
        other_id = conv.user_b_id if conv.user_a_id == sender.id else conv.user_a_id
        other = await session.get(User, other_id) if other_id else None
        if other is None or other.deactivated_at is not None:
            raise Conflict(
                "The other person in this conversation is no longer active.",
                code="recipient_inactive",
            )
        message = internal_message(
            ctx.keyring,
            org_id=sender.org_id,
            conversation_id=conv.id,
            sender=sender,
            recipient_username=other.username,
            body=body,
        )
    else:
        assert conv.external_number is not None
        group_id = conv.owner_group_id
        if group_id is not None:
            group = await session.get(Group, group_id)
            from_number = outbound_number_for(
                group=GroupNumbers(
                    group.outbound_sms_number if group and group.deleted_at is None else None,
                    conv.last_inbound_to_number,
                )
            )
        else:
            from_number = outbound_number_for(sender=sender)
        await ensure_owned(session, conv.org_id, from_number)
        await opt_out.ensure_not_opted_out(session, conv.org_id, conv.external_number)
        message = outbound_message(
            ctx.keyring,
            org_id=conv.org_id,
            conversation_id=conv.id,
            body=body,
            from_number=from_number,
            to_number=conv.external_number,
            sender=sender,
            group_id=group_id,
        )
    conv.last_message_at = message.created_at
    _store(session, [message])
    await session.commit()
    await publish(ctx, session, "message.created", [message])
    ctx.wake_worker()
    return render_message(ctx.keyring, message)
