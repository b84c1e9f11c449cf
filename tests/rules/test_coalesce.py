"""Calls made in one loop turn share one batch; each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from app.infra.coalesce import Coalescer


async def test_calls_in_one_turn_share_a_batch_and_get_their_own_answers() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        await asyncio.sleep(0)
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(run)
    results = await asyncio.gather(*(c.submit(i) for i in range(5)), return_exceptions=True)
    assert batches == [[0, 1, 2, 3, 4]]
    assert results[:3] == [0, 10, 20] and results[4] == 40
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad 3"
    # A later call is a batch of its own.
    assert await c.submit(7) == 70
    assert batches[-1] == [7]


async def test_a_failed_batch_fails_every_caller_and_the_next_batch_is_fresh() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("server went away")
        return items

    c: Coalescer[int, int] = Coalescer(run)
    results = await asyncio.gather(c.submit(1), c.submit(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await c.submit(3) == 3


async def test_a_caller_that_gave_up_is_not_sent() -> None:
    sent: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        sent.append(items)
        return items

    c: Coalescer[int, int] = Coalescer(run)
    task = asyncio.ensure_future(c.submit(1))
    other = asyncio.ensure_future(c.submit(2))
    await asyncio.sleep(0)  # both are queued
    task.cancel()
    assert await other == 2
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == [[2]]


async def test_with_a_batch_in_flight_later_calls_wait_and_go_together() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        if len(batches) == 1:
            await release.wait()
        return items

    c: Coalescer[int, int] = Coalescer(run, max_in_flight=1)
    first = asyncio.ensure_future(c.submit(0))
    await asyncio.sleep(0.01)
    assert batches == [[0]]  # a lone call goes at once
    later = [asyncio.ensure_future(c.submit(i)) for i in range(1, 4)]
    await asyncio.sleep(0.01)
    assert batches == [[0]]  # they wait for the batch in flight...
    release.set()
    assert await first == 0 and await asyncio.gather(*later) == [1, 2, 3]
    assert batches == [[0], [1, 2, 3]]  # ...and then go as one


async def test_batches_are_cut_at_max_batch() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        return items

    c: Coalescer[int, int] = Coalescer(run, max_batch=2)
    assert await asyncio.gather(*(c.submit(i) for i in range(5))) == [0, 1, 2, 3, 4]
    assert batches == [[0, 1], [2, 3], [4]]
