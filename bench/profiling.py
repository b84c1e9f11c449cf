"""py-spy against one uvicorn worker under load, and a plain-text summary of where the
CPU time goes (only samples of the thread holding the GIL: Python CPU time)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(
    pid: int,
    seconds: float,
    out: Path,
    *,
    native: bool = os.environ.get("BENCH_PROFILE_NATIVE", "1") == "1",
    rate: int = 200,
) -> Any:
    """Start `py-spy record` on `pid` for `seconds`, writing collapsed stacks to `out`."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out),
        # Only the thread holding the GIL: idle threads (e.g. anyio's thread pool
        # waiting on its queue) would otherwise count as busy.
        "--gil",
    ]
    if native:
        cmd.append("--native")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame(raw: str) -> str:
    """`func (path:line)` without the line number."""
    return _LINE.sub(")", raw.strip())


def _file(frame: str) -> str:
    return frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else ""


def _is_python(frame: str) -> bool:
    return _file(frame).endswith((".py", ".pyx"))


def component(frame: str) -> str:
    """The package a frame belongs to: `app`, `sqlalchemy`, `asyncio`, ..."""
    path = _file(frame)
    if not _is_python(frame):
        return f"native:{path}" if path else "native"
    parts = path.split("/")
    if len(parts) == 1:
        return parts[0].removesuffix(".py")
    return parts[0]


# Native leaves where a worker waits rather than computes. py-spy samples wall time of
# the thread holding the GIL; on a busy 2-core machine a socket write that wakes
# PostgreSQL or Redis often lets the scheduler run them while the writer sits in the
# call (the workers' kernel time stays near 10% by /proc while "write" reached 43% of
# samples). Such samples are counted apart and left out of the percentages below.
OFF_CPU_LEAVES = frozenset({"write", "writev", "sendto", "sendmsg", "epoll_wait"})


def summarize(raw_path: Path, top: int = 25) -> dict[str, Any]:
    """Self time by innermost Python function, inclusive time by function and package,
    of the samples not waiting in a socket write (`OFF_CPU_LEAVES`)."""
    total = 0
    waiting = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_component: Counter[str] = Counter()
    inclusive_component: Counter[str] = Counter()
    native_leaf: Counter[str] = Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith("0x")]
        if not frames:
            continue
        if frames[-1].split(" (")[0] in OFF_CPU_LEAVES:
            waiting += count
            continue
        total += count
        python = [f for f in frames if _is_python(f)]
        owner = python[-1] if python else frames[-1]
        self_time[owner] += count
        by_component[component(owner)] += count
        if not _is_python(frames[-1]):
            native_leaf[frames[-1]] += count
        for f in set(python):
            inclusive[f] += count
        for c in {component(f) for f in python}:
            inclusive_component[c] += count

    def pct(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)] if total else []

    app_inclusive = Counter({k: v for k, v in inclusive.items() if _file(k).startswith("app/")})
    return {
        "samples": total,
        "samples_in_socket_writes": waiting,
        "self_by_python_function": pct(self_time, top),
        "self_by_package": pct(by_component, 15),
        "inclusive_by_package": pct(inclusive_component, 15),
        "inclusive_app_functions": pct(app_inclusive, top),
        "inclusive_functions": pct(inclusive, top + 15),
        "native_leaves": pct(native_leaf, 10),
    }


def render(name: str, summary: dict[str, Any]) -> str:
    """The summary as text, one section per view."""
    out = [
        f"# {name}: {summary['samples']} samples on CPU (% of these); "
        f"{summary.get('samples_in_socket_writes', 0)} more in socket writes, left out"
    ]
    for key, title in (
        ("self_by_package", "self time by package (innermost Python frame)"),
        ("inclusive_by_package", "inclusive time by package"),
        ("self_by_python_function", "self time by innermost Python function"),
        ("inclusive_app_functions", "inclusive time of the app's own functions"),
        ("inclusive_functions", "inclusive time by function"),
        ("native_leaves", "native leaf frames"),
    ):
        out.append(f"\n## {title}")
        out += [f"{p:6.1f}%  {frame}" for frame, p in summary[key]]
    return "\n".join(out) + "\n"
