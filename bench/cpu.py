"""Whose CPU a scenario ran on: this benchmark's processes (servers, wrk, clients, and
the PostgreSQL backends of its databases) or everyone else's. On a shared machine a
test suite running beside the benchmark takes cores from both the app and the floor;
the results record how much, and the benchmark waits for a quiet machine first."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def _proc_times() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, utime+stime ticks, command name)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), name)
    return out


def _cpu_ticks() -> list[int]:
    """The machine's CPU ticks from /proc/stat: user, nice, system, idle, iowait, irq,
    softirq, steal, ..."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def _machine_busy(fields: list[int] | None = None) -> tuple[int, int]:
    """(busy ticks, total ticks) of all cores, from /proc/stat (or `fields`, read of it)."""
    fields = fields or _cpu_ticks()
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _steal(fields: list[int]) -> tuple[int, int]:
    """(steal ticks, total ticks): time the host gave this machine's cores to others.
    No process here shows it, but a scenario that ran while it was high ran slower."""
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def _descendants(procs: dict[int, tuple[int, int, str]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class Watch:
    """CPU used during one scenario, split into ours and others'."""

    def __init__(self, our_backend_pids: Any) -> None:
        # A callable returning the pids of PostgreSQL backends serving our databases.
        self._backends = our_backend_pids

    def start(self) -> None:
        self._t = time.perf_counter()
        self._procs = _proc_times()
        ticks = _cpu_ticks()
        self._busy = _machine_busy(ticks)
        self._steal = _steal(ticks)

    def stop(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self._t
        procs = _proc_times()
        ticks = _cpu_ticks()
        busy, total = _machine_busy(ticks)
        steal, steal_total = _steal(ticks)
        ours = _descendants(procs, os.getpid()) | {os.getpid()}
        ours |= set(self._backends())
        used: dict[str, float] = {"ours": 0.0, "postgres_other": 0.0, "redis": 0.0, "others": 0.0}
        # Ours, by kind: the Python servers and clients, our PostgreSQL backends, wrk.
        split: dict[str, float] = {"python": 0.0, "postgres": 0.0, "wrk": 0.0}
        names: dict[str, float] = {}
        for pid, (_, ticks, name) in procs.items():
            delta = ticks - self._procs.get(pid, (0, 0, ""))[1]
            if delta <= 0:
                continue
            cpu = delta / TICK
            if pid in ours:
                used["ours"] += cpu
                kind = "postgres" if name.startswith("postgres") else name
                split[kind if kind in split else "python"] += cpu
            elif name.startswith("postgres"):
                used["postgres_other"] += cpu
            elif name.startswith("redis"):
                used["redis"] += cpu
            else:
                used["others"] += cpu
                names[name] = names.get(name, 0.0) + cpu
        capacity = seconds * CORES
        machine = (busy - self._busy[0]) / max(1, total - self._busy[1])
        return {
            "machine_busy_pct": round(100 * machine, 1),
            "steal_pct": round(
                100 * (steal - self._steal[0]) / max(1, steal_total - self._steal[1]), 1
            ),
            "ours_pct": round(100 * used["ours"] / capacity, 1),
            "others_pct": round(100 * (used["others"] + used["postgres_other"]) / capacity, 1),
            "redis_pct": round(100 * used["redis"] / capacity, 1),
            "cpu_seconds": {k: round(v, 2) for k, v in {**split, "redis": used["redis"]}.items()},
            "others_top": sorted(
                ((n, round(100 * c / capacity, 1)) for n, c in names.items()),
                key=lambda x: -x[1],
            )[:3],
        }


def wait_quiet(max_wait: float, threshold_pct: float = 20.0, window: float = 1.0) -> float:
    """Wait (at most `max_wait` s) until the machine is under `threshold_pct` busy for one
    `window`; returns the seconds waited. Call while our own servers are idle."""
    started = time.perf_counter()
    while True:
        b0, t0 = _machine_busy()
        time.sleep(window)
        b1, t1 = _machine_busy()
        busy = 100 * (b1 - b0) / max(1, t1 - t0)
        waited = time.perf_counter() - started
        if busy < threshold_pct or waited >= max_wait:
            return waited
