"""Real server processes for system tests: the app under uvicorn, and a private Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before serving {url}")
            try:
                if http.get(url).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lifespan shutdown, as a crash would be."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _env(settings_env: Mapping[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return {**base, "PYTHONPATH": str(ROOT), **settings_env}


@contextmanager
def app_process(
    settings_env: Mapping[str, str], port: int | None = None, uvicorn_args: Sequence[str] = ()
) -> Iterator[Process]:
    """`uvicorn app.main:app` in its own process, configured only by its environment
    (and `uvicorn_args`, e.g. `("--root-path", "/sms")`)."""
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix="app-", suffix=".log")[1])
    env = _env({"PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", **settings_env})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                *uvicorn_args,
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    p = Process(proc, f"http://127.0.0.1:{port}", log)
    try:
        _wait_http(p.url + "/healthz", proc)
        yield p
    finally:
        p.stop()


def start_worker(settings_env: Mapping[str, str]) -> Process:
    """`python -m app worker`: a delivery worker with no HTTP server."""
    log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=ROOT,
            env=_env(settings_env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Process(proc, "", log)


@contextmanager
def private_redis() -> Iterator[tuple[str, Process]]:
    """A Redis of our own on a free port, so a test may stop and restart it."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="redis-", suffix=".log")[1])

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    exe,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    holder = Process(start(), f"redis://127.0.0.1:{port}/0", log)

    def restart() -> None:
        holder.proc = start()

    holder.restart = restart  # type: ignore[attr-defined]
    try:
        yield holder.url, holder
    finally:
        holder.kill()


async def _pipe(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    silenced: Callable[[], bool] = lambda: False,
) -> None:
    """Copy `src` to `dst` until `src` ends or either side drops; then close `dst`.
    While `silenced()`, what is read is dropped (a black hole)."""
    try:
        while data := await src.read(65536):
            if silenced():
                continue
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()


class TcpProxy:
    """A loopback TCP proxy to a real server that a test can cut and restore, to take a
    dependency away from a process without stopping the machine's shared service."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cut_off = False
        # Silent: connections stay open but nothing crosses (a failover, a firewall that
        # dropped its state). Connections silenced stay silent after `restore`.
        self.silent = False
        self._silenced: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def cut(self) -> None:
        """Drop every open connection and refuse new ones until `restore`."""
        self.cut_off = True
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self.cut_off = False
        self.silent = False

    def silence(self) -> None:
        """From now on nothing crosses: open connections and new ones are accepted and
        kept, and never answered, as a host that vanished without a reset."""
        self.silent = True
        self._silenced.update(self._writers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        if self.silent:
            # Accepted, never answered; read and drop what the client sends.
            self._silenced.add(writer)
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(65536):
                    pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        def silenced() -> bool:
            return writer in self._silenced

        await asyncio.gather(
            _pipe(reader, up_writer, silenced), _pipe(up_reader, writer, silenced)
        )
        self._writers.discard(writer)
        self._writers.discard(up_writer)


async def _answer_and_close(writer: asyncio.StreamWriter, status: bytes) -> None:
    writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


class PrefixProxy:
    """A loopback reverse proxy that serves an app under a path prefix, as nginx's
    `location /sms/ { proxy_pass http://app/; }` does: a request for `/sms/x?q` goes to
    the app as `/x?q` (the host header kept), anything outside the prefix is 404.

    One request per connection (it asks the app to close after answering), which every
    HTTP client handles."""

    def __init__(self, prefix: str, target_host: str, target_port: int) -> None:
        self.prefix = prefix.rstrip("/")
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        """The public URL of the app: the proxy's address and the prefix."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _upstream_target(self, target: bytes) -> bytes | None:
        prefix = self.prefix.encode()
        if target != prefix and not target.startswith((prefix + b"/", prefix + b"?")):
            return None
        rest = target[len(prefix) :]
        return rest if rest.startswith(b"/") else b"/" + rest

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.split(b" ", 2)
        upstream_target = self._upstream_target(target)
        if upstream_target is None:
            await _answer_and_close(writer, b"404 Not Found")
            return
        headers = [h for h in header_lines if not h.lower().startswith(b"connection:")]
        upstream_head = b"\r\n".join(
            [b" ".join([method, upstream_target, version]), *headers, b"connection: close"]
        )
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            await _answer_and_close(writer, b"502 Bad Gateway")
            return
        up_writer.write(upstream_head + b"\r\n\r\n")
        # The body goes up as it comes; the answer comes back until the app closes.
        body = asyncio.create_task(_pipe(reader, up_writer))
        await _pipe(up_reader, writer)
        body.cancel()
        with suppress(asyncio.CancelledError):
            await body
