"""The in-process limiters against the rules they implement, on a clock the test drives."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.infra.limiters import InProcessAutoReplyWindow, InProcessSendRateLimiter


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


ORGS = ["org-1", "org-2"]
NUMBERS = ["+14155550100", "+14155550101", "+442079460958"]

auto_reply_events = st.lists(
    st.tuples(
        st.integers(0, 40_000),  # milliseconds since the previous event
        st.sampled_from(ORGS),
        st.sampled_from(NUMBERS),
        st.booleans(),  # True: the reply could not be stored, so the window is released
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(st.integers(1, 30_000), auto_reply_events)
def test_auto_reply_window_grants_exactly_what_the_rule_allows(
    window_ms: int, events: list[tuple[int, str, str, bool]]
) -> None:
    async def run() -> None:
        # Whole milliseconds on both sides keep the model exact.
        clock = FakeClock(start=0.0)
        window = InProcessAutoReplyWindow(clock=clock)
        now_ms = 0
        granted_at: dict[tuple[str, str], int] = {}
        for gap_ms, org, number, fails_to_store in events:
            now_ms += gap_ms
            clock.now = now_ms / 1000
            last = granted_at.get((org, number))
            expected = last is None or now_ms >= last + window_ms
            got = await window.try_acquire(org, number, window_ms / 1000)
            assert bool(got) is expected, (now_ms, org, number, last)
            if got:
                granted_at[(org, number)] = now_ms
                if fails_to_store:
                    await window.release(org, number)
                    del granted_at[(org, number)]

    asyncio.run(run())


async def test_first_message_gets_the_reply_and_the_rest_wait_for_the_window() -> None:
    clock = FakeClock()
    window = InProcessAutoReplyWindow(clock=clock)
    assert await window.try_acquire("org-1", "+14155550100", 30)
    clock.advance(29.9)
    assert not await window.try_acquire("org-1", "+14155550100", 30)
    # Another organization, or another number, has its own window.
    assert await window.try_acquire("org-2", "+14155550100", 30)
    assert await window.try_acquire("org-1", "+14155550101", 30)
    clock.advance(0.1)
    assert await window.try_acquire("org-1", "+14155550100", 30)


async def test_concurrent_acquires_in_one_process_grant_one() -> None:
    window = InProcessAutoReplyWindow()
    results = await asyncio.gather(
        *(window.try_acquire("org-1", "+14155550100", 30) for _ in range(50))
    )
    assert sum(bool(r) for r in results) == 1


async def test_window_memory_is_bounded() -> None:
    clock = FakeClock()
    window = InProcessAutoReplyWindow(clock=clock)
    for i in range(20_000):
        clock.advance(0.01)
        assert await window.try_acquire("org-1", f"+1415555{i:04d}", 1.0)
    # About 100 windows are live at any moment; expired ones must have been swept.
    assert len(window._holds) < 2_100


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
async def test_window_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError):
        await InProcessAutoReplyWindow().try_acquire("org-1", "+14155550100", bad)


send_events = st.lists(
    st.tuples(st.integers(0, 3_000), st.sampled_from(NUMBERS)),  # (ms gap, from number)
    max_size=80,
)


@settings(max_examples=300)
@given(st.sampled_from([0.5, 1, 2, 5, 8]), send_events)
def test_send_rate_allows_one_send_per_interval(rate: float, events: list[tuple[int, str]]) -> None:
    async def run() -> None:
        clock = FakeClock(start=0.0)
        limiter = InProcessSendRateLimiter(clock=clock)
        interval_ms = round(1000 / rate)
        now_ms = 0
        last_sent: dict[str, int] = {}
        for gap_ms, number in events:
            now_ms += gap_ms
            clock.now = now_ms / 1000
            wait = await limiter.acquire(number, rate)
            last = last_sent.get(number)
            if last is None or now_ms >= last + interval_ms:
                assert wait == 0
                last_sent[number] = now_ms
            else:
                assert wait == pytest.approx((last + interval_ms - now_ms) / 1000, abs=1e-6)

    asyncio.run(run())


async def test_waiting_the_returned_time_is_enough() -> None:
    clock = FakeClock()
    limiter = InProcessSendRateLimiter(clock=clock)
    assert await limiter.acquire("+14155550100", 3) == 0
    for _ in range(20):
        wait = await limiter.acquire("+14155550100", 3)
        assert 0 < wait <= 1 / 3 + 1e-6
        # A refusal consumes nothing: asking again at once gives the same answer.
        assert await limiter.acquire("+14155550100", 3) == wait
        clock.advance(wait)
        assert await limiter.acquire("+14155550100", 3) == 0


async def test_burst_lets_that_many_through_then_spaces_them() -> None:
    clock = FakeClock()
    limiter = InProcessSendRateLimiter(burst=3, clock=clock)
    waits = [await limiter.acquire("+14155550100", 1) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(1.0)
    clock.advance(1.0)
    assert await limiter.acquire("+14155550100", 1) == 0
    assert await limiter.acquire("+14155550100", 1) > 0


async def test_rate_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = InProcessSendRateLimiter(clock=clock)
    for i in range(20_000):
        clock.advance(0.01)
        assert await limiter.acquire(f"+1415555{i:04d}", 1.0) == 0
    assert len(limiter._tats) < 2_100


@pytest.mark.parametrize("bad", [0, -2, float("nan"), float("inf")])
async def test_rate_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError):
        await InProcessSendRateLimiter().acquire("+14155550100", bad)


async def test_a_holder_finds_its_own_window_but_nobody_else_gets_it() -> None:
    window = InProcessAutoReplyWindow()
    first = await window.try_acquire("org-1", "+14155550100", 30, holder="telnyx:m-1")
    assert first.acquired and first.new
    again = await window.try_acquire("org-1", "+14155550100", 30, holder="telnyx:m-1")
    assert again.acquired and not again.new
    assert not await window.try_acquire("org-1", "+14155550100", 30, holder="telnyx:m-2")
    await window.release("org-1", "+14155550100", holder="telnyx:m-2")
    assert not await window.try_acquire("org-1", "+14155550100", 30)
    await window.release("org-1", "+14155550100", holder="telnyx:m-1")
    assert await window.try_acquire("org-1", "+14155550100", 30, holder="telnyx:m-3")
