"""The in-process worker's share of a busy web process (`WebFirst` over `WebLoad`), on a
clock the test drives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from app.infra.web_load import HostBoard, WebLoad
from app.worker import WebFirst


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_busy_time_counts_while_at_least_one_request_is_handled() -> None:
    clock = FakeClock()
    load = WebLoad(clock)
    load.started()
    clock.now += 1
    load.started()  # overlapping: the same second is not counted twice
    clock.now += 1
    load.ended()
    assert load.busy_seconds() == 2.0  # still one in flight: counted up to now
    clock.now += 1
    load.ended()
    clock.now += 5  # idle
    assert load.busy_seconds() == 3.0
    assert load.in_flight == 0


def _saturate(load: WebLoad, clock: FakeClock, seconds: float) -> None:
    load.started()
    clock.now += seconds
    load.ended()


def test_an_idle_web_tier_leaves_the_worker_unbounded() -> None:
    clock = FakeClock()
    load = WebLoad(clock)
    first = WebFirst(load, rate=10, clock=clock)
    for _ in range(20):
        clock.now += 0.3
        assert first.allowance(50) == 50
    assert not first.busy


def test_a_busy_web_tier_holds_the_worker_to_its_rate_and_releases_it_when_idle() -> None:
    clock = FakeClock()
    load = WebLoad(clock)
    first = WebFirst(load, rate=10, clock=clock)
    _saturate(load, clock, 1.0)
    # The bucket holds half a second of the rate: 5 now, then 10 a second, a batch of
    # 5 at a time (never one by one).
    assert first.allowance(50) == 5
    assert first.busy
    assert first.allowance(50) == 0
    assert first.seconds_until_allowed() == 0.5
    clock.now += 0.1
    assert first.allowance(50) == 0
    assert first.seconds_until_allowed() == pytest.approx(0.4)
    given = 0
    for _ in range(10):  # 2.5 s of a saturated web tier, looked at every 0.25 s
        load.started()
        clock.now += 0.25
        given += first.allowance(50)
        load.ended()
    assert given == 25
    # The load stops: at the next look the worker takes all it wants again.
    clock.now += 0.3
    assert first.allowance(50) == 50
    assert not first.busy


def test_a_lightly_used_web_tier_is_not_busy() -> None:
    clock = FakeClock()
    load = WebLoad(clock)
    first = WebFirst(load, rate=10, clock=clock)
    for _ in range(8):  # a request handled 30% of the time
        load.started()
        clock.now += 0.09
        load.ended()
        clock.now += 0.21
        assert first.allowance(50) == 50


def test_another_busy_process_of_the_server_holds_this_worker_back(tmp_path: Path) -> None:
    """The server's processes share the machine: while another one's web tier is busy
    (it holds most of the client's connections), an idle process's worker takes its
    bounded share too, not the cores the busy one needs. A process that died mid-request
    is not taken for busy."""
    clock = FakeClock()
    board = tmp_path / "board"
    here, there = WebLoad(clock), WebLoad(clock)
    here.share(HostBoard(board, pid=os.getpid()))
    there.share(HostBoard(board, pid=os.getppid()))  # alive, another pid
    first = WebFirst(here, rate=10, clock=clock)
    clock.now += 0.3
    assert first.allowance(50) == 50  # nobody busy
    _saturate(there, clock, 1.0)
    # Its part of the server's 10 a second: 5 a second (two live processes), a bucket of
    # half a second of them.
    assert first.allowance(50) == 2
    assert first.busy
    clock.now += 1.0  # the other one idle again
    assert first.allowance(50) == 50
    assert not first.busy

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = WebLoad(clock)
    dead.share(HostBoard(board, pid=gone.pid))
    dead.started()  # and never ended
    clock.now += 1.0
    assert first.allowance(50) == 50
    assert not first.busy


def test_the_busy_rate_is_the_servers_shared_by_its_live_processes(tmp_path: Path) -> None:
    """Two web processes, both busy: together their workers take the server's rate, not
    each its own. When one of them is gone, the other takes the whole rate again."""
    clock = FakeClock()
    board = tmp_path / "board"
    here, there = WebLoad(clock), WebLoad(clock)
    here.share(HostBoard(board, pid=os.getpid()))
    other = subprocess.Popen(["sleep", "60"])
    try:
        there.share(HostBoard(board, pid=other.pid))
        mine, theirs = WebFirst(here, rate=40, clock=clock), WebFirst(there, rate=40, clock=clock)
        given = 0
        for _ in range(40):  # 10 s of both web tiers saturated, looked at every 0.25 s
            here.started()
            there.started()
            clock.now += 0.25
            given += mine.allowance(50) + theirs.allowance(50)
            here.ended()
            there.ended()
        # 40 a second for 10 s, give or take what the two buckets held at the start.
        assert 400 - 20 <= given <= 400 + 20, given
    finally:
        other.kill()
        other.wait()
    given = 0
    for _ in range(40):  # 10 s more, this process alone and busy
        here.started()
        clock.now += 0.25
        given += mine.allowance(50)
        here.ended()
    assert 400 - 20 <= given <= 400 + 20, given
