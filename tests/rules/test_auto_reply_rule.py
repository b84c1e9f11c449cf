"""The auto-responder's rule and its decision, against a model written from the contract.

API.md: a reply is sent only when ALL hold: not sent to a group; not from an internal
number; the user is `sms_enabled`; the user has an `outbound_sms_number`; the text is not
blank; it is enabled; and the rate window allows it. Beyond the spec: never to a number
that has opted out, never in answer to a STOP/START/HELP keyword.

The contract lists the seven criteria in that order but does not say where the two
beyond-the-spec ones rank; the service ranks them right after `internal_sender`, and
tests/api/test_auto_responder.py pins that a STOP (a keyword from a number that is now
opted out) records `keyword`. The window is always asked last, so that a message failing
any other criterion never takes it.

Version 2: a responder with a schedule that is not active now (the schedule open, no
away period) records `within_hours`, after every other criterion and before the window,
so such a message never takes the window either. A group's after-hours reply is a
responder too: a group without one records `group_recipient` as before; a group with
one is held to the same exclusions (internal sender, keyword, opted out), its text,
whether it is enabled and whether it is active, but not to a user's own SMS settings.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.infra.limiters import Hold, InProcessAutoReplyWindow, LimiterUnavailable
from app.services.auto_responder import (
    AutoReplyFacts,
    Decision,
    auto_reply_block,
    decide_auto_reply,
)

# (reason, "this criterion fails for these facts"), first failing one wins.
ORDER: list[tuple[str, Callable[[AutoReplyFacts], bool]]] = [
    ("group_recipient", lambda f: f.to_group and not f.group_after_hours),
    ("internal_sender", lambda f: f.from_internal_number),
    ("keyword", lambda f: f.is_keyword),
    ("opted_out", lambda f: f.opted_out),
    ("sms_disabled", lambda f: not f.to_group and not f.sms_enabled),
    ("no_outbound_number", lambda f: not f.to_group and not f.has_outbound_number),
    ("empty_text", lambda f: f.text.strip() == ""),
    ("disabled", lambda f: not f.enabled),
    ("within_hours", lambda f: not f.active),
]
# The contract's seven criteria, in the contract's order (the window is the seventh).
CONTRACT_ORDER = [
    "group_recipient",
    "internal_sender",
    "sms_disabled",
    "no_outbound_number",
    "empty_text",
    "disabled",
]
CONTRACT_REASONS = {
    "sent",
    "group_recipient",
    "internal_sender",
    "sms_disabled",
    "no_outbound_number",
    "empty_text",
    "disabled",
    "rate_limited",
    "opted_out",
    "keyword",
    "limiter_unavailable",
    "within_hours",
}


def expected_block(facts: AutoReplyFacts) -> str | None:
    for reason, fails in ORDER:
        if fails(facts):
            return reason
    return None


def all_criteria_hold(f: AutoReplyFacts) -> bool:
    """The contract's sentences, read literally (the window aside): a user's
    auto-responder, or a group's after-hours reply."""
    user_responder = not f.to_group and f.sms_enabled and f.has_outbound_number
    group_responder = f.to_group and f.group_after_hours
    return (
        (user_responder or group_responder)
        and not f.from_internal_number
        and bool(f.text.strip())
        and f.enabled
        and not f.is_keyword
        and not f.opted_out
        and f.active
    )


# Blank texts of every kind str.strip() knows, and texts with something in them.
texts = st.one_of(
    st.sampled_from(["", " ", "\t", "\n\r ", "\u00a0", "\u2003\u3000", "Hi", " out today "]),
    st.text(max_size=8),
)
any_facts = st.builds(
    AutoReplyFacts,
    to_group=st.booleans(),
    group_after_hours=st.booleans(),
    from_internal_number=st.booleans(),
    is_keyword=st.booleans(),
    opted_out=st.booleans(),
    sms_enabled=st.booleans(),
    has_outbound_number=st.booleans(),
    text=texts,
    enabled=st.booleans(),
    active=st.booleans(),
)
eligible_text = st.text(min_size=1, max_size=8).filter(lambda t: t.strip() != "")
# A user's auto-responder that would answer.
eligible_user_facts = st.builds(
    AutoReplyFacts,
    to_group=st.just(False),
    group_after_hours=st.booleans(),  # not asked of a user
    from_internal_number=st.just(False),
    is_keyword=st.just(False),
    opted_out=st.just(False),
    sms_enabled=st.just(True),
    has_outbound_number=st.just(True),
    text=eligible_text,
    enabled=st.just(True),
    active=st.just(True),
)
# A group's after-hours reply that would answer, whatever a user's SMS settings say.
eligible_group_facts = st.builds(
    AutoReplyFacts,
    to_group=st.just(True),
    group_after_hours=st.just(True),
    from_internal_number=st.just(False),
    is_keyword=st.just(False),
    opted_out=st.just(False),
    sms_enabled=st.booleans(),
    has_outbound_number=st.booleans(),
    text=eligible_text,
    enabled=st.just(True),
    active=st.just(True),
)
eligible_facts = st.one_of(eligible_user_facts, eligible_group_facts)
# A user's auto-responder that answers: every criterion holds.
ELIGIBLE = AutoReplyFacts(
    to_group=False,
    group_after_hours=False,
    from_internal_number=False,
    is_keyword=False,
    opted_out=False,
    sms_enabled=True,
    has_outbound_number=True,
    text="Back at 2pm.",
    enabled=True,
    active=True,
)
# Eligible but for exactly one criterion: the messages most likely to take the window wrongly.
BREAKS: dict[str, dict[str, Any]] = {
    "group_recipient": {"to_group": True, "group_after_hours": False},
    "internal_sender": {"from_internal_number": True},
    "keyword": {"is_keyword": True},
    "opted_out": {"opted_out": True},
    "sms_disabled": {"sms_enabled": False},
    "no_outbound_number": {"has_outbound_number": False},
    "empty_text": {"text": " \t "},
    "disabled": {"enabled": False},
    "within_hours": {"active": False},
}
nearly_eligible_facts = st.builds(
    lambda facts, reason: replace(facts, **BREAKS[reason]),
    eligible_facts,
    st.sampled_from(sorted(BREAKS)),
)
# Many events eligible, so that the window is exercised and not only the rule.
facts_mix = st.one_of(eligible_facts, nearly_eligible_facts, any_facts)


def test_the_model_ranks_the_contract_criteria_in_the_contracts_order() -> None:
    ranked = [reason for reason, _ in ORDER]
    assert [r for r in ranked if r in CONTRACT_ORDER] == CONTRACT_ORDER
    # Decided after every other criterion, before the window.
    assert ranked[-1] == "within_hours"
    assert {*ranked, "sent", "rate_limited", "limiter_unavailable"} == CONTRACT_REASONS


@settings(max_examples=2000)
@given(facts_mix)
def test_rule_allows_exactly_when_every_criterion_holds(facts: AutoReplyFacts) -> None:
    block = auto_reply_block(facts)
    assert (block is None) == all_criteria_hold(facts)
    assert block == expected_block(facts)


@pytest.mark.parametrize("index", range(len(ORDER)))
def test_each_criterion_alone_blocks_with_its_own_reason(index: int) -> None:
    """From an eligible message, break one criterion, then also every later one."""
    eligible = ELIGIBLE
    assert auto_reply_block(eligible) is None
    reason = ORDER[index][0]
    assert auto_reply_block(replace(eligible, **BREAKS[reason])) == reason
    later: dict[str, Any] = {}
    for later_reason, _ in ORDER[index:]:
        later.update(BREAKS[later_reason])
    assert auto_reply_block(replace(eligible, **later)) == reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


ORGS = [uuid.UUID(int=1), uuid.UUID(int=2)]
NUMBERS = ["+14155550100", "+14155550101", "+447700900123"]

Event = tuple[int, uuid.UUID, str, AutoReplyFacts]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[Event]]:
    """A window length and events; gaps often land exactly on the window's edge."""
    window_ms = draw(st.one_of(st.integers(1, 50), st.integers(1, 30_000)))
    gaps = st.one_of(
        st.integers(0, 2 * window_ms),
        st.sampled_from([0, 1, window_ms - 1, window_ms, window_ms + 1]),
    )
    events = draw(
        st.lists(
            st.tuples(gaps, st.sampled_from(ORGS), st.sampled_from(NUMBERS), facts_mix),
            max_size=50,
        )
    )
    return window_ms, events


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_decisions_are_exactly_what_the_rule_and_the_window_allow(
    scenario: tuple[int, list[Event]],
) -> None:
    window_ms, events = scenario

    async def run() -> None:
        # Whole milliseconds on both sides keep the model exact.
        clock = FakeClock()
        window = InProcessAutoReplyWindow(clock=clock)
        now_ms = 0
        # When each (org, number) last got a reply: only eligible messages take the window.
        replied_at: dict[tuple[uuid.UUID, str], int] = {}
        for gap_ms, org, number, facts in events:
            now_ms += gap_ms
            clock.now = now_ms / 1000
            block = expected_block(facts)
            last = replied_at.get((org, number))
            if block is not None:
                expected = Decision(False, block)
            elif last is None or now_ms >= last + window_ms:
                expected = Decision(True, "sent")
                replied_at[(org, number)] = now_ms
            else:
                expected = Decision(False, "rate_limited")
            got = await decide_auto_reply(
                facts,
                window,
                org_id=org,
                external_number=number,
                window_seconds=window_ms / 1000,
            )
            assert got == expected, (now_ms, org, number, facts, last)
            assert got.as_dict() == {"sent": expected.sent, "reason": expected.reason}

    asyncio.run(run())


def test_one_reply_per_org_and_number_in_a_window_then_the_next_eligible_one() -> None:
    """The model above, spelled out once: a burst, a blocked message, the window ending."""

    async def run() -> None:
        clock = FakeClock()
        window = InProcessAutoReplyWindow(clock=clock)
        ok = replace(ELIGIBLE, text="Closed today.")
        off = replace(ok, enabled=False)
        open_hours = replace(ok, active=False)

        async def decide(facts: AutoReplyFacts, org: uuid.UUID, number: str) -> str:
            d = await decide_auto_reply(
                facts, window, org_id=org, external_number=number, window_seconds=30
            )
            return d.reason

        a, b = ORGS
        patient, other = NUMBERS[0], NUMBERS[1]
        assert await decide(ok, a, patient) == "sent"
        assert await decide(ok, a, patient) == "rate_limited"
        assert await decide(ok, b, patient) == "sent"  # another organization
        assert await decide(ok, a, other) == "sent"  # another number
        clock.now = 29.999
        assert await decide(ok, a, patient) == "rate_limited"
        clock.now = 30.0
        assert await decide(off, a, patient) == "disabled"  # does not take the free window
        assert await decide(open_hours, a, patient) == "within_hours"  # nor does this
        assert await decide(ok, a, patient) == "sent"  # the first eligible one does
        assert await decide(ok, a, patient) == "rate_limited"

    asyncio.run(run())


class UnreachableWindow:
    """A shared window whose store cannot be reached (Redis down)."""

    def __init__(self) -> None:
        self.asked = 0

    async def try_acquire(
        self, org_id: str, external_number: str, window_seconds: float, holder: str | None = None
    ) -> Hold:
        self.asked += 1
        raise LimiterUnavailable("Redis is down")

    async def release(self, org_id: str, external_number: str, holder: str | None = None) -> None:
        raise AssertionError("nothing was acquired, so nothing may be released")


@settings(max_examples=300, deadline=None)
@given(facts_mix)
def test_limiter_unavailable_fails_closed_and_only_eligible_messages_ask(
    facts: AutoReplyFacts,
) -> None:
    window = UnreachableWindow()
    decision = asyncio.run(
        decide_auto_reply(
            facts, window, org_id=ORGS[0], external_number=NUMBERS[0], window_seconds=30
        )
    )
    block = expected_block(facts)
    assert decision.sent is False
    assert decision.reason == (block if block is not None else "limiter_unavailable")
    assert window.asked == (1 if block is None else 0)
