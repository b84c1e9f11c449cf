"""Calls made in the same turn of the event loop, sent to a server together.

Under load many requests reach the same step in the same turn (each ran until its
first await). A `Coalescer` gathers their items and hands them to one batch call
(one Redis pipeline, one script call) on the next turn: one write and one read on the
socket instead of one each per request. Each caller still waits for its own answer
and sees its own error, so nothing about what a caller may rely on changes; a lone
call is delayed by one loop turn at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Results that are exceptions are raised to their own caller.
BatchCall = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Coalescer(Generic[T, R]):
    """`max_in_flight`: at most this many batches at once (None: no limit). What comes
    while they run waits and goes in the next batch, as soon as one ends: under load
    batches grow instead of multiplying (a database commits once per batch), and a
    lone call still goes at once."""

    def __init__(
        self, run_batch: BatchCall[T, R], max_batch: int = 256, max_in_flight: int | None = None
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Kept: asking asyncio for the running loop costs a system call (getpid) on
        # Python 3.11, three times per webhook here. Only one loop runs in a thread, so
        # the kept loop, while running, is the caller's.
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def submit(self, item: T) -> R:
        loop = self._running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        limit = self._max_in_flight
        while self._pending and (limit is None or len(self._running) < limit):
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            task = self._running_loop().create_task(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._pending and not self._scheduled:
            self._scheduled = True
            self._running_loop().call_soon(self._flush)

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        # A caller that gave up (its deadline passed) is not sent at all.
        live = [(item, future) for item, future in batch if not future.done()]
        if not live:
            return
        try:
            results = await self._run_batch([item for item, _ in live])
        except Exception as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in live:
                future.cancel()
            raise
        for (_, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
