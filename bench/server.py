"""uvicorn processes for the app and the floor: started, waited for, stopped."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def uvicorn_flags(workers: int) -> list[str]:
    """The uvicorn settings both the app and the floor run with."""
    flags = ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    if importlib.util.find_spec("uvloop"):
        flags += ["--loop", "uvloop"]
    if importlib.util.find_spec("httptools"):
        flags += ["--http", "httptools"]
    return flags


def children_of(parent: int) -> list[int]:
    """Process ids whose parent is `parent` (from /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # The command name is in parentheses and may contain spaces.
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == parent:
                found.append(int(entry.name))
    return found


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The processes serving requests: uvicorn's workers (or uvicorn itself with one)."""
        workers = []
        for pid in children_of(self.proc.pid):
            with contextlib.suppress(OSError):
                # multiprocessing may also start a resource tracker: not a worker.
                if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    workers.append(pid)
        return workers or [self.proc.pid]

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the process group this server was started in, SIGKILL if it hangs."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start(
    name: str,
    target: str,
    *,
    workers: int,
    env: dict[str, str],
    log_dir: Path,
    ready_path: str,
    timeout: float = 60,
) -> Server:
    """`uvicorn <target>` in its own process group; returns once `ready_path` answers 200."""
    port = free_port()
    log_path = log_dir / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *uvicorn_flags(workers),
    ]
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    with log_path.open("ab") as log:
        log.write(f"\n== {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        try:
            answered = httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200
            # Every worker must be up, not just the first to answer.
            if answered and (workers == 1 or len(server.worker_pids()) >= workers):
                time.sleep(0.5)
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s; see {log_path}")
