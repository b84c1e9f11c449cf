"""How busy this process's web tier is, for the work that shares its event loop.

The delivery worker runs inside each web process by default. Left alone it competes
with the requests for the one event loop, and under load it wins too much: every
auto-reply it sends costs a claim, a carrier call, a record and the carrier's receipt
(another request), so the web tier served a fraction of what it serves alone. The
worker asks this gauge how busy the web tier has been and, while it is busy, takes a
bounded share (`app.worker.WebFirst`); when the load stops, it catches up at full speed.

A request counts as busy from its arrival until its response starts: for a JSON answer
that is all of its handling, for an event stream only its opening (a stream held open
for hours does no work in between, and must not make the process look busy).

The processes of one server (`uvicorn --workers N`) share the machine's cores, and a
client's connections need not spread evenly over them: one process may serve nearly
all the requests while another, idle, would deliver at full speed on the cores the busy
one needs. So each process also shows its busy time on a board the server's processes
share (`HostBoard`, a small memory-mapped file named after their parent), and a worker
holds back while any of them is busy.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class HostBoard:
    """Each process's busy time in a slot of a file the processes of one server map:
    its pid, its busy seconds before the current spell, and when that spell began (0:
    idle). `time.monotonic` is the machine's clock, the same in every process."""

    SLOTS = 64
    _SLOT = struct.Struct("<qdd")

    def __init__(self, path: Path, pid: int | None = None) -> None:
        size = self.SLOTS * self._SLOT.size
        self.pid = os.getpid() if pid is None else pid
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # One process at a time takes a slot: its own, a free one, or a dead
            # process's (the board holds 64; past that, the last is shared).
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
            self._offset = self._take_slot()
            self.publish(0.0, 0.0)
        finally:
            # Unlocked by name: the mapping holds a duplicate of the descriptor, and with
            # it the lock, until it is unmapped.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _take_slot(self) -> int:
        start = self.pid % self.SLOTS
        for step in range(self.SLOTS):
            offset = ((start + step) % self.SLOTS) * self._SLOT.size
            (holder, _, _) = self._SLOT.unpack_from(self._map, offset)
            if holder in (0, self.pid) or not _alive(holder):
                return offset
        return (self.SLOTS - 1) * self._SLOT.size

    @classmethod
    def for_this_server(cls) -> HostBoard:
        """The board of the processes started by this one's parent (uvicorn's)."""
        name = f"msg-web-load-{os.getuid()}-{os.getppid()}"
        return cls(Path(tempfile.gettempdir()) / name)

    def publish(self, total: float, since: float) -> None:
        self._SLOT.pack_into(self._map, self._offset, self.pid, total, since)

    def others(self, now: float) -> dict[int, float]:
        """The busy seconds so far of every other live process on the board."""
        seen: dict[int, float] = {}
        for pid, total, since in self._SLOT.iter_unpack(self._map):
            if pid <= 0 or pid == self.pid or not _alive(pid):
                continue  # (one that died mid-spell would look busy for ever)
            if since:
                total += max(0.0, now - since)
            seen[pid] = total
        return seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WebLoad:
    """Requests being handled, and the total time at least one was."""

    __slots__ = ("_board", "_busy_since", "_busy_total", "_clock", "in_flight")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.in_flight = 0
        self._busy_total = 0.0
        self._busy_since = 0.0
        self._board: HostBoard | None = None

    def share(self, board: HostBoard) -> None:
        """Show this process's busy time on `board` from now on."""
        self._board = board
        board.publish(self._busy_total, self._busy_since if self.in_flight else 0.0)

    def started(self) -> None:
        if self.in_flight == 0:
            self._busy_since = self._clock()
            if self._board is not None:
                self._board.publish(self._busy_total, self._busy_since)
        self.in_flight += 1

    def ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._busy_total += self._clock() - self._busy_since
            if self._board is not None:
                self._board.publish(self._busy_total, 0.0)

    def others_busy_seconds(self) -> dict[int, float]:
        """The busy seconds of the other processes on this one's board, by pid."""
        return {} if self._board is None else self._board.others(self._clock())

    def busy_seconds(self) -> float:
        """Seconds so far with at least one request being handled."""
        if self.in_flight:
            return self._busy_total + self._clock() - self._busy_since
        return self._busy_total


# This process's web tier (the middleware counts its requests; the in-process worker
# reads it).
WEB_LOAD = WebLoad()
