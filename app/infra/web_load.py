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
"""

from __future__ import annotations

import time
from collections.abc import Callable


class WebLoad:
    """Requests being handled, and the total time at least one was."""

    __slots__ = ("_busy_since", "_busy_total", "_clock", "in_flight")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.in_flight = 0
        self._busy_total = 0.0
        self._busy_since = 0.0

    def started(self) -> None:
        if self.in_flight == 0:
            self._busy_since = self._clock()
        self.in_flight += 1

    def ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._busy_total += self._clock() - self._busy_since

    def busy_seconds(self) -> float:
        """Seconds so far with at least one request being handled."""
        if self.in_flight:
            return self._busy_total + self._clock() - self._busy_since
        return self._busy_total


# This process's web tier (the middleware counts its requests; the in-process worker
# reads it).
WEB_LOAD = WebLoad()
