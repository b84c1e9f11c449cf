"""Messages: the routing rules for sends, replies and inbound SMS, and delivery statuses."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import bindparam, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.carriers.base import OutboundStatus, StatusUpdate
from app.context import AppContext
from app.crypto import Keyring
from app.errors import (
    Conflict,
    Invalid,
    MmsNotSupported,
    NotFound,
)
from app.ids import new_id
from app.models import (
    Conversation,
    DeliveryJob,
    Extension,
    Group,
    GroupMember,
    IdempotencyRecord,
    Message,
    UnroutedMessage,
    User,
    utcnow,
)
from app.services import carrier_input, conversations, limits, opt_out
from app.services.auth import Principal
from app.services.outbound_numbers import GroupNumbers, ensure_owned, outbound_number_for
from app.services.phone import InvalidPhoneNumber, is_textable_destination, normalize_e164
from app.services.routes import RouteUser
from app.services.sealing import (
    open_auto_reply,
    open_body,
    open_response,
    seal_auto_reply,
    seal_body,
    seal_response,
)
from app.services.segments import count_segments

log = logging.getLogger(__name__)

MAX_BODY_CHARS = 1600
# Outbound statuses in the order they happen; a status never moves backwards.
STATUS_RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}
TERMINAL = frozenset({"delivered", "undelivered", "failed"})


# ---------------------------------------------------------------------------
# Rendering and encryption


def render_message(keyring: Keyring, m: Any, body: str | None = None) -> dict[str, Any]:
    """A message as the API and the event stream show it; `m` is anything with a
    message's attributes (the model, its Draft, a driver row). `body`: its plain body,
    when the caller has it."""
    return {
        "id": str(m.id),
        "conversation_id": str(m.conversation_id),
        "direction": m.direction,
        "sender_username": m.sender_username,
        "recipient_username": m.recipient_username,
        "group_id": str(m.group_id) if m.group_id else None,
        "from_number": m.from_number,
        "to_number": m.to_number,
        "body": open_body(keyring, m.id, m.org_id, m.body_ciphertext) if body is None else body,
        "status": m.status,
        "auto_reply": m.auto_reply,
        "auto_reply_decision": m.auto_reply_decision,
        "segments": m.segments,
        "encoding": m.encoding,
        "media_dropped": m.media_dropped,
        "error_code": m.error_code,
        "error_message": m.error_message,
        "created_at": m.created_at.isoformat(),
        "updated_at": m.updated_at.isoformat(),
    }


def message_fields(
    keyring: Keyring, *, org_id: uuid.UUID, body: str, **fields: Any
) -> dict[str, Any]:
    """The columns of a new message: id, sealed body, segments, timestamps and `fields`."""
    message_id = new_id()
    info = count_segments(body)
    now = utcnow()
    # Explicit, not column defaults: a message is rendered before it is flushed.
    fields.setdefault("auto_reply", False)
    fields.setdefault("media_dropped", 0)
    return {
        "id": message_id,
        "org_id": org_id,
        "body_ciphertext": seal_body(keyring, message_id, org_id, body),
        "segments": info.segments,
        "encoding": info.encoding,
        "created_at": now,
        "updated_at": now,
        **fields,
    }


def _new_message(keyring: Keyring, *, org_id: uuid.UUID, body: str, **fields: Any) -> Message:
    return Message(**message_fields(keyring, org_id=org_id, body=body, **fields))


# ---------------------------------------------------------------------------
# Events


async def publish(
    ctx: AppContext,
    session: AsyncSession | None,
    event_type: str,
    messages: Sequence[Any],
    audience: tuple[str, ...] | None = None,
    bodies: Sequence[str] | None = None,
) -> None:
    """Tell the users who see each message's conversation (`audience` when the caller
    knows it, else read through `session`); a failure here loses nothing stored
    (clients resync through the REST API). `bodies`: the messages' plain bodies, when
    the caller has them (nothing to decrypt then). The events go out together, in
    order."""
    audiences: dict[uuid.UUID, tuple[str, ...]] = {}
    sends: list[tuple[Any, Awaitable[str]]] = []
    for i, m in enumerate(messages):
        try:
            if audience is not None:
                audiences[m.conversation_id] = audience
            elif m.conversation_id not in audiences:
                assert session is not None
                conv = await session.get(Conversation, m.conversation_id)
                audiences[m.conversation_id] = (
                    await conversations.audience_of(session, conv) if conv else ()
                )
            seen_by = audiences[m.conversation_id]
            if seen_by:
                data = render_message(ctx.keyring, m, bodies[i] if bodies else None)
                sends.append((m, ctx.events.publish(event_type, str(m.org_id), seen_by, data)))
        except Exception as exc:
            _not_published(m, exc)
    results = await asyncio.gather(*(send for _, send in sends), return_exceptions=True)
    for (m, _), result in zip(sends, results, strict=True):
        if isinstance(result, Exception):
            _not_published(m, result)
        elif isinstance(result, BaseException):
            raise result


def _not_published(m: Any, exc: Exception) -> None:
    # Expected while Redis is down: one line, no traceback.
    log.warning(
        "event not published",
        extra={"fields": {"message_id": str(m.id), "error": repr(exc)}},
    )


# ---------------------------------------------------------------------------
# Sending


@dataclass
class _Party:
    user: User | None = None
    number: str | None = None


@dataclass
class _Problems:
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, index: int, code: str, message: str) -> None:
        self.items.append({"index": index, "code": code, "message": message})


def _check_body(body: str, media: list[str] | None) -> None:
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


async def _resolve(session: AsyncSession, sender: User, addresses: Sequence[Any]) -> list[_Party]:
    """Every party a send reaches, checked before anything is stored."""
    problems = _Problems()
    parties: list[_Party] = []
    seen_users: set[uuid.UUID] = set()
    seen_numbers: set[str] = set()
    sms_wanted = False
    for index, address in enumerate(addresses):
        if address.phone_number:
            try:
                number = normalize_e164(address.phone_number)
            except InvalidPhoneNumber as exc:
                problems.add(
                    index,
                    "invalid_phone_number",
                    f"'{address.phone_number}' is not a valid phone number: {exc}",
                )
                continue
            if not is_textable_destination(number):
                problems.add(index, "not_textable", f"{number} cannot receive text messages.")
                continue
            sms_wanted = True
            if number not in seen_numbers:
                seen_numbers.add(number)
                parties.append(_Party(number=number))
            continue
        users: list[User] = []
        if address.username:
            user = await session.scalar(
                select(User).where(
                    User.org_id == sender.org_id,
                    User.username == address.username,
                    User.deactivated_at.is_(None),
                )
            )
            if user is None:
                problems.add(
                    index,
                    "unknown_recipient",
                    f"No user '{address.username}' in this organization.",
                )
                continue
            if user.id == sender.id:
                problems.add(index, "cannot_message_self", "You cannot send a message to yourself.")
                continue
            users = [user]
        else:
            entry = await session.get(Extension, (sender.org_id, address.extension))
            if entry is None:
                problems.add(
                    index,
                    "unknown_recipient",
                    f"No user or group has extension {address.extension}.",
                )
                continue
            if entry.user_id is not None:
                user = await session.get(User, entry.user_id)
                if user is None or user.deactivated_at is not None:
                    problems.add(
                        index,
                        "unknown_recipient",
                        f"No user or group has extension {address.extension}.",
                    )
                    continue
                if user.id == sender.id:
                    problems.add(
                        index, "cannot_message_self", "You cannot send a message to yourself."
                    )
                    continue
                users = [user]
            else:
                # A group's extension fans out to its members; the sender is never
                # its own recipient.
                users = list(
                    (
                        await session.scalars(
                            select(User)
                            .join(GroupMember, GroupMember.user_id == User.id)
                            .where(
                                GroupMember.group_id == entry.group_id,
                                User.id != sender.id,
                                User.deactivated_at.is_(None),
                            )
                            .order_by(User.username)
                        )
                    ).all()
                )
                if not users:
                    problems.add(
                        index,
                        "empty_group",
                        f"The group at extension {address.extension} has no other members.",
                    )
                    continue
        for user in users:
            if user.id not in seen_users:
                seen_users.add(user.id)
                parties.append(_Party(user=user))
    if sms_wanted and not problems.items:
        outbound_number_for(sender=sender)
        for party in parties:
            if party.number and await opt_out.is_opted_out(session, sender.org_id, party.number):
                problems.add(
                    next(
                        i
                        for i, a in enumerate(addresses)
                        if a.phone_number and _same_number(a.phone_number, party.number)
                    ),
                    "recipient_opted_out",
                    f"{party.number} has opted out of texts from this organization (STOP).",
                )
        if problems.items:
            raise Conflict(
                "A recipient has opted out of texts from this organization.",
                code="recipient_opted_out",
                details=problems.items,
            )
    if problems.items:
        raise Invalid(
            "Some recipients cannot be reached; nothing was sent.",
            code="invalid_recipients",
            details=problems.items,
        )
    return parties


def _same_number(raw: str, e164: str) -> bool:
    try:
        return normalize_e164(raw) == e164
    except InvalidPhoneNumber:
        return False


def _request_hash(addresses: Sequence[Any], body: str, media: list[str] | None) -> str:
    canonical = orjson.dumps(
        {"to": [a.model_dump() for a in addresses], "body": body, "media": media or []},
        option=orjson.OPT_SORT_KEYS,
    )
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


def _internal_message(
    keyring: Keyring, sender: User, recipient: User, conv: Conversation, body: str
) -> Message:
    return _new_message(
        keyring,
        org_id=sender.org_id,
        body=body,
        conversation_id=conv.id,
        direction="internal",
        sender_user_id=sender.id,
        sender_username=sender.username,
        recipient_username=recipient.username,
        status="delivered",
    )


def outbound_fields(
    keyring: Keyring,
    *,
    org_id: uuid.UUID,
    conversation_id: uuid.UUID,
    body: str,
    from_number: str,
    to_number: str,
    sender: User | RouteUser | None,
    group_id: uuid.UUID | None = None,
    auto_reply: bool = False,
) -> dict[str, Any]:
    """The columns of a new outbound SMS, queued for the carrier."""
    return message_fields(
        keyring,
        org_id=org_id,
        body=body,
        conversation_id=conversation_id,
        direction="outbound",
        sender_user_id=sender.id if sender else None,
        sender_username=sender.username if sender else None,
        recipient_username=None,
        group_id=group_id,
        from_number=from_number,
        to_number=to_number,
        status="queued",
        auto_reply=auto_reply,
    )


def _outbound_message(keyring: Keyring, *, conv: Conversation, **fields: Any) -> Message:
    return Message(**outbound_fields(keyring, conversation_id=conv.id, **fields))


def delivery_job_fields(message: Any) -> dict[str, Any]:
    """The columns of an outbound message's outbox row (stored in the same transaction);
    `message` is a Message or its Draft."""
    assert message.from_number is not None
    return {
        "id": new_id(),
        "message_id": message.id,
        "org_id": message.org_id,
        "from_number": message.from_number,
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": message.created_at,
        "created_at": message.created_at,
        "updated_at": message.created_at,
    }


def delivery_job(message: Message) -> DeliveryJob:
    return DeliveryJob(**delivery_job_fields(message))


def _enqueue(session: AsyncSession, message: Message) -> None:
    """The outbox row, in the same transaction as the message it delivers."""
    session.add(delivery_job(message))


async def send_messages(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    addresses: Sequence[Any],
    body: str,
    media: list[str] | None,
    idempotency_key: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Send one message per party (users, group members, phone numbers); all or nothing.

    Returns the HTTP status and body, so that a repeat with the same Idempotency-Key
    gets exactly the first response.
    """
    request_hash = _request_hash(addresses, body, media)
    if idempotency_key:
        replay = await _idempotent_replay(
            ctx.keyring, session, principal, idempotency_key, request_hash
        )
        if replay is not None:
            return 201, replay
    _check_body(body, media)
    max_recipients = ctx.settings.max_recipients_per_send
    # A list longer than the cap is refused before each of its addresses is looked up.
    limits.check_recipient_count(len(addresses), max_recipients)
    sender = await _load_sender(session, principal)
    parties = await _resolve(session, sender, addresses)
    limits.check_recipient_count(len(parties), max_recipients)
    # One unit per message: the request paid one at the edge (app.rate_limits).
    if len(parties) > 1:
        await ctx.api_limits.charge(principal.token_hash, len(parties) - 1)
    created: list[Message] = []
    now = utcnow()
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
            created.append(_internal_message(ctx.keyring, sender, party.user, conv, body))
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
            message = _outbound_message(
                ctx.keyring,
                org_id=sender.org_id,
                conv=conv,
                body=body,
                # The user's own number: it cannot be released while it is theirs (a
                # foreign key), and the worker checks again when it sends.
                from_number=outbound_number_for(sender=sender),
                to_number=party.number,
                sender=sender,
            )
            created.append(message)
    session.add_all(created)
    for m in created:
        if m.direction == "outbound":
            _enqueue(session, m)
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
    _check_body(body, media)
    sender = await _load_sender(session, principal)
    if conv.kind == "internal":
        other_id = conv.user_b_id if conv.user_a_id == sender.id else conv.user_a_id
        other = await session.get(User, other_id) if other_id else None
        if other is None or other.deactivated_at is not None:
            raise Conflict(
                "The other person in this conversation is no longer active.",
                code="recipient_inactive",
            )
        message = _internal_message(ctx.keyring, sender, other, conv, body)
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
        message = _outbound_message(
            ctx.keyring,
            org_id=conv.org_id,
            conv=conv,
            body=body,
            from_number=from_number,
            to_number=conv.external_number,
            sender=sender,
            group_id=group_id,
        )
    conv.last_message_at = message.created_at
    session.add(message)
    if message.direction == "outbound":
        _enqueue(session, message)
    await session.commit()
    await publish(ctx, session, "message.created", [message])
    ctx.wake_worker()
    return render_message(ctx.keyring, message)


async def get_message(
    ctx: AppContext, session: AsyncSession, principal: Principal, message_id: uuid.UUID
) -> dict[str, Any]:
    """One message from a conversation the caller may see."""
    message = await session.scalar(
        select(Message).where(Message.id == message_id, Message.org_id == principal.org_id)
    )
    if message is None:
        raise NotFound("No such message.", code="message_not_found")
    try:
        await conversations.get_visible(session, principal, message.conversation_id)
    except NotFound:
        raise NotFound("No such message.", code="message_not_found") from None
    return render_message(ctx.keyring, message)


# ---------------------------------------------------------------------------
# Delivery statuses


async def advance_outbound(
    session: AsyncSession,
    message_id: uuid.UUID,
    status: OutboundStatus,
    *,
    carrier: str | None = None,
    carrier_message_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record what the carrier said about an outbound message, in the caller's transaction.

    Conditional UPDATEs, not read-modify-write: the carrier id is stored only where none
    is, and the status only moves forward, so a receipt and the worker racing each
    other can never overwrite `delivered` with `sent`. Returns whether anything changed.
    """
    now = utcnow()
    changed = False
    if carrier_message_id is not None:
        result = await session.execute(
            _SET_CARRIER_ID,
            {"mid": message_id, "carrier_name": carrier, "cid": carrier_message_id, "now": now},
            execution_options=NO_SYNC,
        )
        changed = bool(result.rowcount)  # type: ignore[attr-defined]
    params: dict[str, Any] = {"mid": message_id, "now": now}
    with_error = bool(error_code or error_message)
    if with_error:
        params.update(code=error_code, text=error_message)
    result = await session.execute(_ADVANCE[status, with_error], params, execution_options=NO_SYNC)
    return changed or bool(result.rowcount)  # type: ignore[attr-defined]


# Built once (these run several times per delivered message). No ORM synchronization:
# the callers read the message afresh after committing. (Parameters of an UPDATE may not
# be named after its columns.)
NO_SYNC = {"synchronize_session": False}
_SET_CARRIER_ID = (
    update(Message)
    .where(Message.id == bindparam("mid"), Message.carrier_message_id.is_(None))
    .values(
        carrier=bindparam("carrier_name"),
        carrier_message_id=bindparam("cid"),
        updated_at=bindparam("now"),
    )
)


def _advance_statement(status: str, with_error: bool) -> Any:
    earlier = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
    values: dict[str, Any] = {"status": status, "updated_at": bindparam("now")}
    if with_error:
        values.update(error_code=bindparam("code"), error_message=bindparam("text"))
    return (
        update(Message)
        .where(Message.id == bindparam("mid"), Message.status.in_(earlier))
        .values(values)
    )


_ADVANCE = {
    (status, with_error): _advance_statement(status, with_error)
    for status in STATUS_RANK
    for with_error in (False, True)
}


async def receive_status(ctx: AppContext, update_: StatusUpdate) -> bool:
    """A carrier's receipt, applied in its own session (see `apply_status`)."""
    storable = carrier_input.storable_status(update_)
    if storable is None:
        return False
    async with ctx.sessionmaker() as session:
        return await apply_status(ctx, session, storable)


async def apply_status(ctx: AppContext, session: AsyncSession, update_: StatusUpdate) -> bool:
    """Move an outbound message forward to the carrier's status; never backwards.

    Returns False when no message matches (an unknown id is acknowledged all the same).
    """
    message_id = await session.scalar(
        _BY_CARRIER_ID, {"carrier": update_.carrier, "cid": update_.carrier_message_id}
    )
    # Lock order is job, then message, as the worker claims: never the reverse, which
    # deadlocks against a claim in progress.
    if message_id is not None:
        await session.execute(_LOCK_JOB, {"mid": message_id})
    else:
        ref = _as_uuid(update_.reference)
        if ref is None:
            return False
        # Matched by our own id only while the message has no carrier id or this one: a
        # receipt for another carrier message never speaks for it. Looked up once its job
        # is locked, so a worker (or receipt) storing the carrier id has committed.
        await session.execute(_LOCK_JOB, {"mid": ref})
        message_id = await session.scalar(
            _BY_REFERENCE,
            {"mid": ref, "carrier": update_.carrier, "cid": update_.carrier_message_id},
        )
        if message_id is None:
            return False
    # A receipt for a message whose worker died after the carrier accepted it also
    # supplies the carrier id we never stored.
    changed = await advance_outbound(
        session,
        message_id,
        update_.status,
        carrier=update_.carrier,
        carrier_message_id=update_.carrier_message_id,
        error_code=update_.error_code,
        error_message=update_.error_message,
    )
    if not changed:
        await session.rollback()
        return True
    await session.execute(
        _SETTLE_JOB, {"mid": message_id, "now": utcnow()}, execution_options=NO_SYNC
    )
    await session.commit()
    message = await session.get(Message, message_id, populate_existing=True)
    if message is not None:
        await publish(ctx, session, "message.updated", [message])
    return True


_BY_CARRIER_ID = select(Message.id).where(
    Message.carrier == bindparam("carrier"),
    Message.carrier_message_id == bindparam("cid"),
    Message.direction == "outbound",
)
_BY_REFERENCE = select(Message.id).where(
    Message.id == bindparam("mid"),
    Message.direction == "outbound",
    or_(
        Message.carrier_message_id.is_(None),
        (Message.carrier == bindparam("carrier"))
        & (Message.carrier_message_id == bindparam("cid")),
    ),
)
_LOCK_JOB = (
    select(DeliveryJob.id).where(DeliveryJob.message_id == bindparam("mid")).with_for_update()
)
_SETTLE_JOB = (
    update(DeliveryJob)
    .where(
        DeliveryJob.message_id == bindparam("mid"),
        DeliveryJob.state.in_(("pending", "in_flight")),
    )
    .values(state="done", lease_expires_at=None, updated_at=bindparam("now"))
)


def _as_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Key rotation


async def reencrypt_bodies(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring, batch: int = 500
) -> int:
    """Re-encrypt everything stored under an older key (message bodies, unrouted texts,
    auto-reply texts, kept idempotent responses); returns how many values changed."""
    changed = 0
    for model, column in (
        (Message, "body_ciphertext"),
        (UnroutedMessage, "body_ciphertext"),
        (User, "auto_reply_ciphertext"),
        (IdempotencyRecord, "response_ciphertext"),
    ):
        changed += await _reencrypt_table(sessions, keyring, model, column, batch)
    return changed


def _reseal(keyring: Keyring, row: Any, blob: bytes) -> bytes:
    if isinstance(row, Message):
        return seal_body(keyring, row.id, row.org_id, open_body(keyring, row.id, row.org_id, blob))
    if isinstance(row, UnroutedMessage):
        return keyring.encrypt(keyring.decrypt(blob, row.id.bytes), row.id.bytes)
    if isinstance(row, User):
        return seal_auto_reply(keyring, row.id, open_auto_reply(keyring, row.id, blob))
    assert isinstance(row, IdempotencyRecord)
    response = open_response(keyring, row.org_id, row.user_id, row.key, blob)
    return seal_response(keyring, row.org_id, row.user_id, row.key, response)


async def _reencrypt_table(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    model: Any,
    column: str,
    batch: int,
) -> int:
    changed = 0
    keys = list(model.__table__.primary_key.columns)
    last: tuple[Any, ...] | None = None
    while True:
        async with sessions() as session:
            stmt = select(model).order_by(*keys).limit(batch)
            if last is not None:
                stmt = stmt.where(tuple_(*keys) > tuple_(*last))
            rows = (await session.scalars(stmt)).all()
            if not rows:
                return changed
            for row in rows:
                blob = getattr(row, column)
                if blob is not None and keyring.needs_reencryption(blob):
                    setattr(row, column, _reseal(keyring, row, blob))
                    changed += 1
            last = tuple(getattr(rows[-1], k.key) for k in keys)
            await session.commit()
