"""Inbound SMS: route, decide the auto-reply, store, tell the audience.

The path every carrier webhook takes, built to do little per message:

0. What the carrier sent is checked against what we can store (`carrier_input`); a
   message we cannot store as sent is kept unrouted as `invalid_payload` instead.
1. The route comes from the per-process cache (`routes`), read from the database only
   on a miss or when the store finds it stale. A message addressed to several numbers
   goes by the first of them that routes.
2. The auto-reply is decided (`auto_responder`) from the route and the sender's facts
   as last seen; when every other criterion passes, the rate window is taken for this
   carrier message (its holder is the message's carrier id, so a retry or a concurrent
   duplicate of the same message finds the window its own, and nobody else's).
3. One statement (`store`) checks that what the decision assumed still holds (the
   organization's directory version, whether the sender is one of our numbers or has
   opted out, that the carrier id is new), then creates or touches the conversation
   and inserts the message, the auto-reply or HELP answer, and its delivery job. A
   wrong assumption stores nothing and answers with the truth; the decision is made
   again from it (and a window taken in vain is given back).
4. The audience's events are published (and `conversation.updated` when the message
   reopened its closed conversation).

A carrier id seen before stores nothing and sends nothing. If storing fails, a window
taken for the reply is given back, so the carrier's retry can still be answered.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from app.carriers.base import InboundSms
from app.context import AppContext
from app.errors import AppError
from app.ids import new_id
from app.metrics import AUTO_REPLY_DECISIONS, INBOUND_MESSAGES, Children
from app.models import UnroutedMessage, utcnow
from app.models.rows import ConversationRow, MessageRow
from app.services import carrier_input, conversations, opt_out
from app.services.auto_responder import (
    AutoReplyFacts,
    Decision,
    decide_auto_reply,
    give_back_window,
    responder_active,
    window_holder,
)
from app.services.inbound_store import (
    InboundRows,
    StoreOutcome,
    is_repeated_carrier_id,
    store_inbound,
)
from app.services.message_rows import delivery_job_for, new_message, outbound_message
from app.services.outbound_numbers import GroupNumbers, outbound_number_for
from app.services.phone import InvalidPhoneNumber, normalize_e164
from app.services.publishing import publish, publish_conversation
from app.services.routing import Route, SenderFacts, load_routes

log = logging.getLogger(__name__)

# A route or a sender's facts changing under the same message more often than this
# means the directory is being rewritten as we speak: the carrier retries later.
MAX_ATTEMPTS = 4

# A text to several numbers is routed by the first of them that routes; a group text
# names a handful, and each number not in the route cache costs a query.
MAX_RECIPIENTS = 10


@dataclass(frozen=True)
class InboundResult:
    outcome: str  # "stored", "duplicate" or "unrouted"
    message_id: uuid.UUID | None = None
    decision: Decision | None = None
    # Why an unrouted message routes nowhere.
    reason: str | None = None


_INBOUND = Children(INBOUND_MESSAGES)
_DECISIONS = Children(AUTO_REPLY_DECISIONS)


# "+1" and ten digits, the area code not starting with 0 or 1: what carriers send for
# North American numbers. Such a string is its own E.164 form when it is valid, and kept
# as it is when not, so it needs no parsing.
_NANP_E164 = re.compile(r"\+1[2-9][0-9]{9}")


def _clean_number(raw: str) -> str | None:
    """The number in E.164 if it is valid; otherwise as the carrier sent it (trimmed, an
    alphanumeric sender or a short code) if we can store that; None if we cannot."""
    if _NANP_E164.fullmatch(raw):
        return raw
    text = raw.strip()
    if carrier_input.has_control_characters(text):
        # A NUL or an escape is no part of any number, however a parser would read it.
        return None
    try:
        return normalize_e164(text)
    except InvalidPhoneNumber:
        return text if carrier_input.storable(text, carrier_input.NUMBER_LENGTH) else None


async def _fresh_route(ctx: AppContext, number: str) -> Route | None:
    async with ctx.sessionmaker() as session:
        found = await load_routes(session, ctx.keyring, number)
    route = found[0] if found else None
    if route is None:
        ctx.routes.forget(number)
    else:
        ctx.routes.put(route)
    return route


async def warm_routes(ctx: AppContext) -> int:
    """Read the routes of the newest numbers (as many as the cache holds) in one go, so
    a new process does not read them one webhook at a time. Any failure is only logged:
    the cache then fills as webhooks come."""
    try:
        async with ctx.sessionmaker() as session:
            routes = await load_routes(session, ctx.keyring, limit=ctx.routes.capacity)
    except Exception as exc:
        log.warning("route cache not warmed", extra={"fields": {"error": repr(exc)}})
        return 0
    for route in routes:
        ctx.routes.put(route)
    return len(ctx.routes)


async def _pick_route(ctx: AppContext, numbers: list[str]) -> tuple[Route | None, str]:
    """The first of the numbers a message was addressed to that routes, with its route;
    else the first we own (its route says why it routes nowhere); else the first.

    Each number's route comes from the cache, or is read: a message to one number (the
    common case) costs what it always did."""
    owned: tuple[Route, str] | None = None
    for number in numbers:
        route = ctx.routes.get(number) or await _fresh_route(ctx, number)
        if route is None:
            continue
        if route.unrouted_reason is None:
            return route, number
        owned = owned or (route, number)
    return owned or (None, numbers[0])


async def receive_inbound(ctx: AppContext, sms: InboundSms) -> InboundResult:
    """Store an inbound SMS where its number routes, decide the auto-reply, queue it."""
    result = await _route_and_store(ctx, sms)
    _INBOUND(sms.carrier, result.outcome, result.reason or "none").inc()
    if result.decision is not None:
        _DECISIONS(result.decision.reason).inc()
    return result


async def _route_and_store(ctx: AppContext, sms: InboundSms) -> InboundResult:
    from_number = _clean_number(sms.from_number)
    cleaned = (_clean_number(n) for n in sms.recipients()[:MAX_RECIPIENTS])
    recipients = [n for n in cleaned if n is not None]
    if (
        from_number is None
        or not recipients
        or not carrier_input.storable(sms.carrier_message_id, carrier_input.CARRIER_ID_LENGTH)
        or not carrier_input.media_count_ok(sms.media_count)
    ):
        return await _keep_invalid(ctx, sms)
    route, to_number = await _pick_route(ctx, recipients)
    keyword = opt_out.classify_keyword(sms.text)
    if route is not None and route.unrouted_reason is None and keyword in ("stop", "start"):
        # Rare, and idempotent: recorded on its own, before the message.
        async with ctx.sessionmaker() as session:
            await opt_out.apply_keyword(session, route.org_id, from_number, keyword, sms.text)
            await session.commit()
    holder = window_holder(sms.carrier, sms.carrier_message_id)
    for _ in range(MAX_ATTEMPTS):
        if route is None:
            return await _store_unrouted(ctx, sms, from_number, to_number, None, "number_not_owned")
        reason = route.unrouted_reason
        if reason is not None:
            return await _store_unrouted(ctx, sms, from_number, to_number, route.org_id, reason)
        org_id = route.org_id
        sender = ctx.sender_facts.get(org_id, from_number)
        if keyword is not None:
            # A keyword is answered (or not) whatever the opt-out said before it.
            sender = replace(sender, opted_out=keyword == "stop")
        decision = await decide_auto_reply(
            _facts(route, sender, keyword is not None or sms.carrier_answered, utcnow()),
            ctx.auto_reply_window,
            org_id=org_id,
            external_number=from_number,
            window_seconds=ctx.settings.auto_reply_window_seconds,
            holder=holder,
        )
        rows = _rows(ctx, route, sms, from_number, to_number, keyword, sender, decision)
        try:
            result = await store_inbound(ctx, rows)
        except Exception:
            if decision.took_window:
                # The reply was not stored: give the window back so the carrier's retry
                # of this webhook can still be answered. (A window this message already
                # held may stand behind a reply a concurrent copy stored: it stays.)
                await give_back_window(ctx.auto_reply_window, org_id, from_number, holder)
            raise
        if result.outcome is StoreOutcome.STORED:
            created = [rows.inbound] if rows.extra is None else [rows.inbound, rows.extra]
            assert result.conversation_id is not None
            for m in created:
                m.conversation_id = result.conversation_id
            await publish(
                ctx, None, "message.created", created, audience=route.audience, bodies=rows.bodies
            )
            if result.reopened:
                await publish_conversation(ctx, result.conversation_id)
            if rows.extra is not None:
                ctx.wake_worker()
            return InboundResult("stored", rows.inbound.id, decision)
        if decision.took_window:
            await give_back_window(ctx.auto_reply_window, org_id, from_number, holder)
        if result.outcome is StoreOutcome.DUPLICATE:
            return InboundResult("duplicate")
        # STALE: what the decision assumed no longer holds. Learn, and decide again.
        ctx.sender_facts.put(org_id, from_number, result.sender)
        if result.version != route.version:
            route = await _fresh_route(ctx, to_number)
    raise AppError(
        "The number's routing is changing; try again shortly.",
        code="routing_changing",
        status=503,
    )


def _facts(route: Route, sender: SenderFacts, is_keyword: bool, at: datetime) -> AutoReplyFacts:
    """What the rule looks at, from the route as cached (schedules are only read, at
    `at`: no query). A group's responder is its after-hours reply, if it has one."""
    if route.group_id is not None:
        after_hours = route.after_hours
        return AutoReplyFacts(
            to_group=True,
            group_after_hours=after_hours is not None,
            from_internal_number=sender.internal,
            is_keyword=is_keyword,
            opted_out=sender.opted_out,
            # A user's own SMS settings: not asked of a group.
            sms_enabled=False,
            has_outbound_number=False,
            text=after_hours.text if after_hours else "",
            enabled=bool(after_hours and after_hours.enabled),
            active=bool(after_hours and after_hours.active(at)),
        )
    user = route.user
    return AutoReplyFacts(
        to_group=False,
        group_after_hours=False,
        from_internal_number=sender.internal,
        is_keyword=is_keyword,
        opted_out=sender.opted_out,
        sms_enabled=bool(user and user.sms_enabled),
        has_outbound_number=bool(user and user.outbound_sms_number),
        text=user.auto_reply_text if user else "",
        enabled=bool(user and user.auto_reply_enabled),
        active=bool(user and responder_active(user.auto_reply_schedule, user.auto_reply_away, at)),
        set_up=bool(user and user.auto_reply_set_up),
    )


def _rows(
    ctx: AppContext,
    route: Route,
    sms: InboundSms,
    from_number: str,
    to_number: str,
    keyword: str | None,
    sender: SenderFacts,
    decision: Decision,
) -> InboundRows:
    """The rows one inbound message makes, for the store to write in one go."""
    now = utcnow()
    user = route.user
    org_id = route.org_id
    if route.group_id is not None:
        key = conversations.group_conversation_key(route.group_id, from_number)
    else:
        assert user is not None
        key = conversations.user_conversation_key(user.id, from_number)
    # Used only if the conversation is new; otherwise the store answers the existing id.
    conv = ConversationRow(
        id=new_id(),
        org_id=org_id,
        kind="sms",
        key=key,
        owner_user_id=user.id if route.group_id is None and user else None,
        owner_group_id=route.group_id,
        external_number=from_number,
        last_inbound_to_number=to_number,
        last_message_at=now,
        created_at=now,
    )
    inbound = new_message(
        ctx.keyring,
        org_id=org_id,
        conversation_id=conv.id,
        direction="inbound",
        body=sms.text,
        status="received",
        recipient_username=user.username if user else None,
        group_id=route.group_id,
        from_number=from_number,
        to_number=to_number,
        media_dropped=sms.media_count,
        carrier=sms.carrier,
        carrier_message_id=sms.carrier_message_id,
        auto_reply_decision=decision.as_dict(),
        at=now,
    )
    extra: MessageRow | None = None
    extra_text = ""
    if decision.sent:
        if route.group_id is not None:
            # The group's after-hours reply, from the number the group's replies go from.
            assert route.after_hours is not None
            extra_text = route.after_hours.text
            reply_from = outbound_number_for(
                group=GroupNumbers(route.group_outbound_sms_number, to_number)
            )
        else:
            assert user is not None
            extra_text = user.auto_reply_text
            reply_from = outbound_number_for(sender=user)
        extra = outbound_message(
            ctx.keyring,
            org_id=org_id,
            conversation_id=conv.id,
            body=extra_text,
            from_number=reply_from,
            to_number=from_number,
            sender=user,
            group_id=route.group_id,
            auto_reply=True,
            at=now,
        )
    elif keyword == "help" and not sender.internal and not sms.carrier_answered:
        extra_text = route.help_text or ctx.settings.default_help_text
        extra = outbound_message(
            ctx.keyring,
            org_id=org_id,
            conversation_id=conv.id,
            body=extra_text,
            from_number=outbound_number_for(answering=to_number),
            to_number=from_number,
            sender=None,
            group_id=route.group_id,
            at=now,
        )
    return InboundRows(
        route_version=route.version,
        expected=sender,
        check_opted_out=keyword is None,
        conversation=conv,
        inbound=inbound,
        extra=extra,
        job=delivery_job_for(extra) if extra is not None else None,
        bodies=(sms.text,) if extra is None else (sms.text, extra_text),
    )


async def _store_unrouted(
    ctx: AppContext,
    sms: InboundSms,
    from_number: str,
    to_number: str,
    org_id: uuid.UUID | None,
    reason: str,
) -> InboundResult:
    row_id = new_id()
    async with ctx.sessionmaker() as session:
        # Unrouted rows have no tenant to bind to; the row id alone is the associated data.
        session.add(
            UnroutedMessage(
                id=row_id,
                org_id=org_id,
                carrier=sms.carrier,
                carrier_message_id=sms.carrier_message_id,
                from_number=from_number,
                to_number=to_number,
                body_ciphertext=ctx.keyring.encrypt(sms.text, row_id.bytes),
                media_dropped=sms.media_count,
                reason=reason,
            )
        )
        try:
            await session.commit()
        except IntegrityError as exc:
            await session.rollback()
            if not is_repeated_carrier_id(exc):
                raise
            return InboundResult("duplicate")
    log.warning("inbound SMS kept unrouted", extra={"fields": {"reason": reason}})
    return InboundResult("unrouted", row_id, reason=reason)


async def _keep_invalid(ctx: AppContext, sms: InboundSms) -> InboundResult:
    """A message we cannot store as sent, kept unrouted for operators with its values made
    to fit (and its text encrypted as any): acknowledged, so the carrier stops sending it."""
    length = carrier_input.NUMBER_LENGTH
    kept = replace(
        sms,
        carrier_message_id=carrier_input.carrier_id_key(sms.carrier_message_id),
        media_count=carrier_input.stored_media_count(sms.media_count),
    )
    from_number = carrier_input.fitted(sms.from_number.strip(), length)
    to_number = carrier_input.fitted(sms.to_number.strip(), length)
    return await _store_unrouted(
        ctx, kept, from_number, to_number, None, carrier_input.INVALID_PAYLOAD
    )
