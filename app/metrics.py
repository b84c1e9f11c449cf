"""The service's Prometheus metrics: what they are, where their values live, how a
scrape reads them.

Several processes behind one port (`uvicorn --workers 4`) must answer a scrape as one
service: whichever worker is asked, it counts what all of them did, or counters would
jump back and forth between the workers' own counts (Prometheus reads a counter going
down as a restart). So the workers share prometheus-client's multiprocess mode: each
writes its values to files in one directory, and a scrape adds them up.

The directory is `PROMETHEUS_MULTIPROC_DIR` when set (empty it before each start, as
prometheus-client asks). When it is not set and this process is one of several workers
of a supervisor (uvicorn's `--workers`, `--reload`), it is a directory for that
supervisor's run, private to the user: `<tmp>/messaging-metrics-<uid>/<pid>-<start>`,
named by the supervisor's process id and start time, so a new start begins from zero and
the directories of runs that ended are removed. A lone process keeps its metrics in
memory, as prometheus-client does by default.

This module must be imported before anything imports `prometheus_client`, which picks
its storage once, at import: every metric of the service is defined here.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _start_of(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with its id, names one run of it."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or _start_of(pid) in (start, None)


def _private_directory(path: Path) -> bool:
    """Whether `path` is a directory of ours that nobody else may write (or read)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    )


_RUN = re.compile(r"^(\d+)-(\d+|x)$")


def _supervisor_directory(supervisor: int) -> str | None:
    """The shared directory of the workers of `supervisor`'s run; the directories of
    runs whose supervisor is gone are removed on the way."""
    base = Path(tempfile.gettempdir()) / f"messaging-metrics-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    if not _private_directory(base):
        log.warning("metrics: %s is not a private directory; each worker counts alone", base)
        return None
    start = _start_of(supervisor)
    run = base / f"{supervisor}-{start or 'x'}"
    for old in base.iterdir():
        found = _RUN.match(old.name)
        if found and old != run:
            pid, began = int(found[1]), found[2]
            if not _alive(pid, None if began == "x" else began):
                shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(FileExistsError):
        run.mkdir(mode=0o700)
    return str(run) if _private_directory(run) else None


def _choose_directory() -> str | None:
    given = os.environ.get(_ENV) or os.environ.get(_ENV.lower())
    if given:
        return given
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return None
    chosen = _supervisor_directory(parent.pid)
    if chosen is not None:
        os.environ[_ENV] = chosen
    return chosen


MULTIPROCESS_DIR = _choose_directory()

# Only now: prometheus-client reads the environment when it is first imported.
from prometheus_client import Counter, Gauge, Histogram  # noqa: E402
from prometheus_client import multiprocess as _multiprocess  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.core import Metric as Metric  # noqa: E402
from prometheus_client.exposition import choose_encoder  # noqa: E402
from prometheus_client.registry import REGISTRY, Collector  # noqa: E402

# --- HTTP ---------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMIT_REFUSALS = Counter(
    "rate_limit_refusals_total",
    "Requests refused with 429 by a limit: token (requests and messages per token), "
    "client_address (failed authentications), streams (event streams per user)",
    ["limit"],
)

# --- carriers, inbound ----------------------------------------------------------------

WEBHOOKS = Counter(
    "webhooks_received_total",
    "Carrier webhooks by carrier and outcome: stored, duplicate, unrouted (inbound texts), "
    "status_applied, status_unmatched (receipts), ignored, invalid_signature, malformed, "
    "not_configured, failed (an error: the carrier retries)",
    ["carrier", "outcome"],
)
INBOUND_MESSAGES = Counter(
    "inbound_messages_total",
    "Inbound texts by carrier and outcome (stored, duplicate, unrouted) and, for "
    "unrouted ones, why (none otherwise)",
    ["carrier", "outcome", "reason"],
)
AUTO_REPLY_DECISIONS = Counter(
    "auto_reply_decisions_total",
    "Auto-reply decisions recorded on stored inbound texts, by reason (sent: a reply went out)",
    ["reason"],
)

# --- the outbox and deliveries -----------------------------------------------------------

DELIVERY_ATTEMPTS = Counter(
    "outbound_delivery_attempts_total",
    "Carrier send attempts by outcome: accepted, retry (failed, tried again later), "
    "failed (final: the message failed)",
    ["outcome"],
)
DELIVERY_RECEIPTS = Counter(
    "delivery_receipts_total",
    "Carrier delivery receipts by carrier and the status they report",
    ["carrier", "status"],
)
CARRIER_SEND_LATENCY = Histogram(
    "carrier_send_duration_seconds",
    "Time a carrier took to answer a send, by carrier and outcome (accepted, error)",
    ["carrier", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# --- live events ---------------------------------------------------------------------

EVENT_STREAMS = Gauge(
    "event_streams_open",
    "Event streams (SSE) open now",
    # Summed over the live workers: a worker that stops takes its streams with it.
    multiprocess_mode="livesum",
)


M = TypeVar("M")


class Children(Generic[M]):
    """A labelled metric's children, each looked up once (`labels()` costs more than
    an increment, and the busiest paths count every request)."""

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = self._metric.labels(*labels)  # type: ignore[attr-defined]
        return found


def gauge(name: str, documentation: str, value: float) -> Metric:
    """A gauge read at scrape time, for `exposition`."""
    return GaugeMetricFamily(name, documentation, value=value)


class _Scrape(Collector):
    """What one scrape answers: every process's metrics, and gauges read just now."""

    def __init__(self, extra: Sequence[Metric]) -> None:
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        if MULTIPROCESS_DIR is None:
            yield from REGISTRY.collect()
        else:
            _forget_stopped_workers(MULTIPROCESS_DIR)
            collector = _multiprocess.MultiProcessCollector(None, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
            yield from collector.collect()  # type: ignore[no-untyped-call]
        yield from self._extra


_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _forget_stopped_workers(directory: str) -> None:
    """Drop the live gauges of workers that died without saying so (killed): their
    streams ended with them."""
    with contextlib.suppress(OSError):
        for pid in {int(m[1]) for name in os.listdir(directory) if (m := _LIVE_FILE.match(name))}:
            if not _alive(pid):
                _multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def process_stopping() -> None:
    """This process serves no more: its live gauges leave the sums."""
    if MULTIPROCESS_DIR is not None:
        _multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]


def exposition(accept: str | None, extra: Sequence[Metric] = ()) -> tuple[bytes, str]:
    """The metrics in the format the scraper asked for (`Accept`: OpenMetrics, else
    Prometheus' text format): the body and its content type."""
    encode, content_type = choose_encoder(accept or "")
    return encode(_Scrape(extra)), content_type
