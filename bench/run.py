"""The benchmark: the app on PostgreSQL and Redis under wrk, against the floor.

    python -m bench.run [--quick] [--workers N] [--duration S] [--out bench/results/latest.json]

See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nacl.signing
import orjson
import redis

from app.crypto import Keyring
from bench import cpu, dataset, delivery, inbox, loadgen, profiling, roundtrips, seed, server
from bench.loadgen import World

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
README = Path(__file__).resolve().parent / "README.md"
SCENARIOS = (
    "floor",
    "inbound",
    "history_hot",
    "history_random",
    "history_paced",
    "history_unloaded",
    "inbox",
    "send",
    "delivery",
    "sse",
    "sse_1000",
    "roundtrips",
)

_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


@dataclass
class Plan:
    size: dataset.Size
    workers: int
    duration: float
    warmup: float
    connections: int
    floor_rate_guess: int
    sse_users: int
    sse_rate: float
    sse_1000_users: int
    sse_1000_per_user: int
    sse_1000_rate: float
    delivery_count: int
    profile_seconds: float


def make_plan(args: argparse.Namespace) -> Plan:
    workers = args.workers or os.cpu_count() or 1
    if args.quick:
        return Plan(
            size=dataset.QUICK,
            workers=workers,
            duration=args.duration or 5,
            warmup=args.warmup if args.warmup is not None else 2,
            connections=args.connections,
            floor_rate_guess=6000,
            sse_users=10,
            sse_rate=20,
            # A smoke test: 100 streams, not 1,000 (see sse_1000 in the full run).
            sse_1000_users=20,
            sse_1000_per_user=5,
            sse_1000_rate=20,
            delivery_count=500,
            profile_seconds=5,
        )
    return Plan(
        size=dataset.FULL,
        workers=workers,
        duration=args.duration or 20,
        warmup=args.warmup if args.warmup is not None else 5,
        connections=args.connections,
        floor_rate_guess=6000,
        sse_users=20,
        sse_rate=50,
        sse_1000_users=1000,
        sse_1000_per_user=1,
        sse_1000_rate=100,
        delivery_count=10_000,
        profile_seconds=15,
    )


# ---------------------------------------------------------------------------------
# Database helpers (each a short asyncio.run: the benchmark itself is sequential)


def db_fetch(database: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        for attempt in range(20):
            try:
                conn = await asyncpg.connect(seed.dsn(database))
                break
            except asyncpg.TooManyConnectionsError:
                # A shared server: someone's tests may hold every slot for a moment.
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def db_value(database: str, query: str, *args: Any) -> Any:
    rows = db_fetch(database, query, *args)
    return rows[0][0] if rows else None


def pending_jobs(database: str) -> int:
    return int(
        db_value(
            database,
            "SELECT count(*) FROM delivery_jobs WHERE state IN ('pending', 'in_flight')",
        )
    )


def busiest_number_backlog(database: str) -> int:
    """The most open jobs any one sending number holds: at the default pacing (one message
    a second per number, a carrier's rule) no deliverer can hand them over in fewer
    seconds."""
    return int(
        db_value(
            database,
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM delivery_jobs "
            "WHERE state IN ('pending', 'in_flight') GROUP BY from_number) AS per_number",
        )
    )


def drain(database: str, timeout: float) -> dict[str, Any]:
    """Wait for the delivery workers to empty the outbox (auto-replies, sends)."""
    started = time.perf_counter()
    left = pending_jobs(database)
    queued = left
    busiest = busiest_number_backlog(database) if queued else 0
    while left and time.perf_counter() - started < timeout:
        time.sleep(0.5)
        left = pending_jobs(database)
    seconds = time.perf_counter() - started
    # Then the carrier's receipts for what was handed over: the next scenario starts
    # once they are applied, not behind them.
    # (Or until none has been applied for 10 s: a receipt lost is reported, not waited on.)
    awaiting = awaiting_receipts(database) if queued else 0
    moved = time.perf_counter()
    while awaiting and time.perf_counter() - moved < 10:
        time.sleep(0.5)
        before, awaiting = awaiting, awaiting_receipts(database)
        if awaiting != before:
            moved = time.perf_counter()
    receipts = time.perf_counter() - started - seconds
    if queued:
        log(
            f"outbox: {queued} jobs drained in {seconds:.1f} s ({left} left; the busiest "
            f"number held {busiest}: at one a second, {busiest} s at the least); their "
            f"receipts applied {receipts:.1f} s later ({awaiting} still awaited)"
        )
    return {
        "queued": queued,
        "seconds": round(seconds, 1),
        "left": left,
        "busiest_number_jobs": busiest,
        # The least the per-number rate allows is `busiest` seconds (one a second).
        "seconds_over_least": round(seconds - busiest, 1) if queued else 0.0,
        "receipts_after_s": round(receipts, 1),
        "receipts_awaited": awaiting,
    }


def awaiting_receipts(database: str) -> int:
    """Messages handed to the carrier whose delivery receipt has not been applied yet."""
    return int(
        db_value(
            database,
            "SELECT count(*) FROM messages WHERE direction = 'outbound' AND status = 'sent'",
        )
    )


def load_world(database: str, meta: dict[str, Any], size: dataset.Size) -> World:
    index = {u["id"]: i for i, u in enumerate(meta["users"])}
    rows = db_fetch(
        database,
        "SELECT id, owner_user_id, external_number FROM conversations "
        "WHERE kind = 'sms' AND owner_user_id IS NOT NULL ORDER BY id",
    )
    conversations = [
        (str(r["id"]), index[str(r["owner_user_id"])], r["external_number"])
        for r in rows
        if str(r["owner_user_id"]) in index
    ]
    conversations = [c for c in conversations if c[0] != meta["hot_conversation_id"]]
    return World(
        size=size,
        users=meta["users"],
        conversations=conversations,
        hot_conversation_id=meta["hot_conversation_id"],
        hot_owner=meta["hot_owner"],
    )


# ---------------------------------------------------------------------------------
# Machine


def machine() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    pg = db_value("postgres", "SHOW server_version")
    redis_version = redis.Redis.from_url(REDIS_URL).info("server").get("redis_version")
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--", "app"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg,
        "redis": redis_version,
        "wrk": (wrk.stdout or wrk.stderr).split("[")[0].strip(),
        "packages": {
            p: version(p)
            for p in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "redis", "uvloop")
        },
        "git_commit": commit + ("+dirty app/" if dirty else ""),
    }


# ---------------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = make_plan(args)
        self.run_id = uuid.uuid4().hex[:8]
        self.out = Path(args.out)
        self.work = self.out.parent / f"work-{self.run_id}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.out.parent / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.prefix = f"bench:{self.run_id}:"
        self.run_db = f"msg_bench_{self.run_id}"
        self.key = nacl.signing.SigningKey.generate()
        self.results: dict[str, Any] = {"scenarios": {}}
        self.only = set(args.only.split(",")) if args.only else set(SCENARIOS)
        self.app: server.Server | None = None
        self.inbox_requests: Path | None = None  # the inbox scenario's, for its profile
        self.worker: subprocess.Popen[bytes] | None = None
        # "default": what `uvicorn app.main:app` gives, each web process delivering;
        # "split": web processes with RUN_WORKER=false and one worker process.
        self.split = args.deployment == "split"

    # -- setup ------------------------------------------------------------------

    def prepare(self) -> None:
        size = self.plan.size
        if self.args.reseed:
            asyncio.run(seed.drop_database(seed.template_name(size)))
        started = time.perf_counter()
        template, meta, seeded = asyncio.run(seed.ensure_template(size, log))
        copy_started = time.perf_counter()
        asyncio.run(seed.create_run_database(template, self.run_db))
        copy_seconds = time.perf_counter() - copy_started
        db_fetch(
            self.run_db,
            "CREATE TABLE bench_floor_messages (LIKE messages INCLUDING ALL)",
        )
        log(f"database {self.run_db}: copied from {template} in {copy_seconds:.1f} s")
        self.meta = meta
        self.world = load_world(self.run_db, meta, size)
        self.keyring = Keyring.from_setting(meta["encryption_keys"])
        self.results["dataset"] = {
            **meta["counts"],
            "seed_version": meta["version"],
            "template_database": template,
            "seeded_now": seeded is not None,
            "seed_seconds": round(meta["seconds"], 1),
            "run_database_copy_seconds": round(copy_seconds, 1),
            "setup_seconds": round(time.perf_counter() - started, 1),
        }

    def app_env(self, **extra: str) -> dict[str, str]:
        env = {
            "DATABASE_URL": seed.sqlalchemy_url(self.run_db),
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": self.prefix,
            "ENCRYPTION_KEYS": self.meta["encryption_keys"],
            "TELNYX_PUBLIC_KEY": base64.b64encode(bytes(self.key.verify_key)).decode(),
            "OPERATOR_TOKEN": uuid.uuid4().hex,
            "CARRIER": "simulator",
            "LOG_LEVEL": "WARNING",
            # wrk drives one token (the hot conversation's owner) at thousands of requests
            # a second: the limiter runs and its cost is measured, but it refuses nothing.
            "API_RATE_LIMIT_PER_MINUTE": "1000000000",
        }
        if self.split:
            # The web tier does not deliver: a separate worker process does (below).
            env["RUN_WORKER"] = "false"
        env.update(extra)
        return env

    def start_worker(self) -> None:
        """The delivery worker, `python -m app worker`, in its own process (the split
        deployment; with the defaults each web process delivers)."""
        if not self.split or (self.worker is not None and self.worker.poll() is None):
            return
        path = self.logs / "worker.log"
        with path.open("ab") as out:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "app", "worker"],
                cwd=ROOT,
                env={**os.environ, **self.app_env(), "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(5)
        self.worker = None

    def drain(self, timeout: float) -> dict[str, Any]:
        """Empty the outbox with the worker process running (it is left running)."""
        self.start_worker()
        return drain(self.run_db, timeout)

    def start_app(self, workers: int, name: str = "app") -> server.Server:
        log(f"starting {name}: uvicorn app.main:app with {workers} worker(s)")
        return server.start(
            name,
            "app.main:app",
            workers=workers,
            env=self.app_env(),
            log_dir=self.logs,
            ready_path="/readyz",
        )

    def requests_file(self, name: str, requests: list[bytes]) -> Path:
        path = self.work / f"{name}.req"
        loadgen.write_requests(path, requests)
        return path

    def backend_pids(self) -> list[int]:
        """PostgreSQL backends serving this run's database (their CPU is ours)."""
        return [
            r["pid"]
            for r in db_fetch(
                "postgres", "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.run_db
            )
        ]

    def measure(
        self,
        url: str,
        file: Path,
        *,
        duration: float,
        connections: int,
        mean_delay_ms: float | None = None,
    ) -> tuple[loadgen.WrkResult, dict[str, Any]]:
        """One measured wrk run, after waiting for a quiet machine, with its CPU split."""
        waited = cpu.wait_quiet(self.args.quiet_wait)
        watch = cpu.Watch(self.backend_pids)
        watch.start()
        result = loadgen.run_wrk(
            url, file, duration=duration, connections=connections, mean_delay_ms=mean_delay_ms
        )
        usage = watch.stop()
        usage["waited_for_quiet_s"] = round(waited, 1)
        return result, usage

    def record(
        self, name: str, runs: list[tuple[loadgen.WrkResult, dict[str, Any]]], conns: int
    ) -> dict[str, Any]:
        """The scenario's numbers: throughput over all its runs, latency averaged over them."""
        summaries = [r.summary() for r, _ in runs]
        requests = sum(r.requests for r, _ in runs)
        seconds = sum(r.seconds for r, _ in runs)

        def mean(key: str) -> float:
            return round(sum(s[key] for s in summaries) / len(summaries), 2)

        summary: dict[str, Any] = {
            "rps": round(requests / seconds, 1) if seconds else 0.0,
            "p50_ms": mean("p50_ms"),
            "p90_ms": mean("p90_ms"),
            "p99_ms": mean("p99_ms"),
            "max_ms": max(s["max_ms"] for s in summaries),
            "errors": sum(s["errors"] for s in summaries),
            "requests": requests,
            "seconds": round(seconds, 2),
            "connections": conns,
            "wrapped": sum(s["wrapped"] for s in summaries),
            "statuses": {
                code: sum(s["statuses"].get(code, 0) for s in summaries)
                for code in sorted({c for s in summaries for c in s["statuses"]})
            },
            "sample_error": next((s["sample_error"] for s in summaries if s["sample_error"]), ""),
            "cpu_others_pct": max(u["others_pct"] for _, u in runs),
            # The host's: cores taken from this machine while the scenario ran.
            "cpu_steal_pct": max(u["steal_pct"] for _, u in runs),
            # CPU milliseconds per request: the Python processes (servers, plus the
            # idle other server during alternating rounds), our PostgreSQL backends.
            "cpu_ms_per_request": {
                kind: round(1000 * sum(u["cpu_seconds"][kind] for _, u in runs) / requests, 3)
                if requests
                else None
                for kind in ("python", "postgres", "redis", "wrk")
            },
            "rounds": [{**s, "cpu": u} for s, (_, u) in zip(summaries, runs, strict=True)],
        }
        self.results["scenarios"][name] = summary
        log(
            f"{name}: {summary['rps']:.0f} req/s, p50 {summary['p50_ms']} ms, "
            f"p99 {summary['p99_ms']} ms, errors {summary['errors']}, "
            f"others' CPU {summary['cpu_others_pct']}%, stolen {summary['cpu_steal_pct']}%"
            + (f", WRAPPED {summary['wrapped']}x" if summary["wrapped"] else "")
        )
        return summary

    def wrk(
        self,
        name: str,
        url: str,
        warmup_file: Path | None,
        file: Path,
        *,
        connections: int | None = None,
        mean_delay_ms: float | None = None,
    ) -> dict[str, Any]:
        plan = self.plan
        conns = connections or plan.connections
        if warmup_file is not None and plan.warmup > 0:
            loadgen.run_wrk(
                url,
                warmup_file,
                duration=plan.warmup,
                connections=conns,
                mean_delay_ms=mean_delay_ms,
            )
        run = self.measure(
            url, file, duration=plan.duration, connections=conns, mean_delay_ms=mean_delay_ms
        )
        return self.record(name, [run], conns)

    def webhooks(self, name: str, count: int, seed_value: int, marker: str = "") -> Path:
        started = time.perf_counter()
        path = self.requests_file(
            name, loadgen.webhook_requests(self.world, self.key, count, seed_value, marker)
        )
        log(f"{name}: {count} signed webhooks generated in {time.perf_counter() - started:.1f} s")
        return path

    # -- scenarios ----------------------------------------------------------------

    def start_floor(self) -> server.Server:
        env = {
            "BENCH_FLOOR_DSN": seed.dsn(self.run_db),
            "BENCH_FLOOR_REDIS": REDIS_URL,
            "BENCH_FLOOR_PREFIX": f"{self.prefix}floor:",
        }
        log(f"starting floor: uvicorn bench.floor:app with {self.plan.workers} worker(s)")
        return server.start(
            "floor",
            "bench.floor:app",
            workers=self.plan.workers,
            env=env,
            log_dir=self.logs,
            ready_path="/healthz",
        )

    def floor_and_inbound(self, app: server.Server) -> None:
        """The floor and the inbound webhook in alternating rounds (floor, app, floor,
        app, ...), so that both meet the same machine: the ratio is what counts.
        The outbox is drained before each round, so the app's deliveries of one round
        do not slow the next floor round."""
        plan = self.plan
        rounds = self.args.rounds or (1 if self.args.quick else 2)
        each = plan.duration / rounds
        floor = self.start_floor() if "floor" in self.only else None
        runs: dict[str, list[tuple[loadgen.WrkResult, dict[str, Any]]]] = {
            "floor": [],
            "inbound": [],
        }
        since = db_value(self.run_db, "SELECT now()")
        spans: list[tuple[Any, Any]] = []  # each inbound round's start and end
        seed_value = 100
        try:
            rate = plan.floor_rate_guess
            for n in range(rounds):
                if floor is not None:
                    seed_value += 1
                    if n == 0 and plan.warmup > 0:
                        warm = self.webhooks("floor-warmup", int(rate * plan.warmup), seed_value)
                        loadgen.run_wrk(
                            floor.url, warm, duration=plan.warmup, connections=plan.connections
                        )
                    seed_value += 1
                    file = self.webhooks(f"floor-{n}", int(rate * each * 1.2) + 100, seed_value)
                    runs["floor"].append(
                        self.measure(floor.url, file, duration=each, connections=plan.connections)
                    )
                    rate = max(500, int(runs["floor"][-1][0].rps))
                if "inbound" in self.only:
                    self.drain(180)
                    seed_value += 1
                    if n == 0 and plan.warmup > 0:
                        warm = self.webhooks(
                            "inbound-warmup", int(rate * plan.warmup * 1.2) + 100, seed_value
                        )
                        loadgen.run_wrk(
                            app.url, warm, duration=plan.warmup, connections=plan.connections
                        )
                        self.drain(180)
                    # Split: the web tier alone, deliveries wait for the worker until the
                    # round ends. Default: the web processes deliver meanwhile.
                    self.stop_worker()
                    seed_value += 1
                    # Fresh timestamps, unique message ids: one file per round.
                    file = self.webhooks(f"inbound-{n}", int(rate * each * 1.2) + 100, seed_value)
                    began = db_value(self.run_db, "SELECT now()")
                    runs["inbound"].append(
                        self.measure(app.url, file, duration=each, connections=plan.connections)
                    )
                    spans.append((began, db_value(self.run_db, "SELECT now()")))
        finally:
            if floor is not None:
                floor.stop()
        for name in ("floor", "inbound"):
            if runs[name]:
                self.record(name, runs[name], plan.connections)
        if not runs["inbound"]:
            return
        time.sleep(1)
        stored = db_fetch(
            self.run_db,
            """SELECT auto_reply_decision::jsonb->>'reason' AS reason, count(*) AS n
               FROM messages WHERE direction = 'inbound' AND carrier = 'telnyx'
                 AND created_at >= $1 GROUP BY 1 ORDER BY 2 DESC""",
            since,
        )
        reasons = {r["reason"]: r["n"] for r in stored}
        total = sum(reasons.values())
        scenario = self.results["scenarios"]["inbound"]
        scenario["stored_during_warmup_and_runs"] = total
        scenario["auto_reply_reasons"] = reasons
        scenario["auto_reply_share"] = round(reasons.get("sent", 0) / total, 3) if total else 0
        # Each round's own share (a sender within the 30 s window of an earlier reply gets
        # none), to set beside the round's throughput.
        for measured, (began, ended) in zip(scenario["rounds"], spans, strict=True):
            row = db_fetch(
                self.run_db,
                """SELECT count(*) AS n,
                          count(*) FILTER (WHERE auto_reply_decision::jsonb->>'reason' = 'sent')
                            AS sent
                   FROM messages WHERE direction = 'inbound' AND carrier = 'telnyx'
                     AND created_at >= $1 AND created_at < $2""",
                began,
                ended,
            )[0]
            measured["auto_reply_share"] = round(row["sent"] / row["n"], 3) if row["n"] else 0
        scenario["outbox_after"] = self.drain(180)
        # Every auto-reply handed to the carrier soon after the load stops.

    def history(self, app: server.Server) -> None:
        plan = self.plan
        if "history_hot" in self.only or "history_paced" in self.only:
            hot = self.requests_file(
                "history-hot", loadgen.history_requests(self.world, 5000, 5, hot=True)
            )
            result = self.wrk("history_hot", app.url, hot, hot)
            result["conversation_messages"] = plan.size.hot_messages
            if "history_paced" in self.only:
                # Latency at half the saturated rate, arrivals spread (not back to back).
                target = max(10.0, result["rps"] * 0.5)
                conns = 16
                self.wrk(
                    "history_paced",
                    app.url,
                    None,
                    hot,
                    connections=conns,
                    mean_delay_ms=conns / target * 1000,
                )
                self.results["scenarios"]["history_paced"]["target_rps"] = round(target, 1)
            if "history_unloaded" in self.only:
                # One request at a time: the service time, without any queueing.
                self.wrk("history_unloaded", app.url, None, hot, connections=1)
        if "history_random" in self.only:
            rnd = self.requests_file(
                "history-random", loadgen.history_requests(self.world, 20000, 6, hot=False)
            )
            self.wrk("history_random", app.url, rnd, rnd)

    def inbox(self, app: server.Server) -> None:
        """The shared inbox list as its user reads it: `GET /v1/conversations?limit=50`
        with the mix of filters in bench/inbox.py, saturated, then at half that rate."""
        token = self.meta["users"][self.meta["inbox_user"]]["token"]
        next_pages = []
        with httpx.Client(base_url=app.url, timeout=30) as http:
            for params in inbox.first_pages():
                r = http.get(
                    inbox.inbox_path(params), headers={"Authorization": f"Bearer {token}"}
                )
                r.raise_for_status()
                cursor = inbox.cursor_of(r.content)
                if cursor is not None:
                    next_pages.append({**params, "cursor": cursor})
        reqs = self.requests_file("inbox", inbox.inbox_requests(token, 20000, 11, next_pages))
        self.inbox_requests = reqs
        result = self.wrk("inbox", app.url, reqs, reqs)
        result["inbox_conversations"] = self.meta["counts"]["inbox_conversations"]
        result["contacts"] = self.meta["counts"]["contacts"]
        # Latency at half the saturated rate, arrivals spread (not back to back).
        target = max(10.0, result["rps"] * 0.5)
        conns = 16
        self.wrk(
            "inbox_paced",
            app.url,
            None,
            reqs,
            connections=conns,
            mean_delay_ms=conns / target * 1000,
        )
        self.results["scenarios"]["inbox_paced"]["target_rps"] = round(target, 1)

    def send(self, app: server.Server) -> None:
        reqs = self.requests_file("send", loadgen.send_requests(self.world, 20000, 8))
        since = db_value(self.run_db, "SELECT now()")
        self.wrk("send", app.url, reqs, reqs)
        created = db_value(
            self.run_db,
            "SELECT count(*) FROM messages WHERE direction = 'outbound' AND NOT auto_reply "
            "AND created_at >= $1",
            since,
        )
        self.results["scenarios"]["send"]["stored_during_warmup_and_run"] = created
        self.results["scenarios"]["send"]["outbox_after"] = self.drain(240)

    def delivery(self) -> None:
        count = self.plan.delivery_count
        ids, committed = asyncio.run(
            delivery.enqueue(seed.dsn(self.run_db), self.world, self.keyring, count)
        )
        log(f"delivery: {count} queued messages committed; waiting for the workers")
        watch = cpu.Watch(self.backend_pids)
        watch.start()
        result = asyncio.run(
            delivery.wait_delivered(seed.dsn(self.run_db), ids, committed, timeout=300)
        )
        result["cpu"] = watch.stop()
        numbers = len({n for u in self.world.users for n in u["numbers"]})
        result["per_number_rate"] = "default (CARRIER_SEND_RATE_PER_NUMBER=1)"
        result["pacing_ceiling_rps"] = numbers  # one message per second per outbound number
        self.results["scenarios"]["delivery"] = result
        log(
            f"delivery: {result['rps']:.0f} msg/s, all done in {result['seconds']} s, "
            f"not delivered {result['errors']} (stuck at 'sent': {result['stuck_at_sent']})"
        )

    def sse(self, app: server.Server, name: str, users: int, per_user: int, rate: float) -> None:
        chosen = self.world.users[:users]
        config = {
            "port": app.port,
            "streams": [
                {"user": u["index"], "token": u["token"]} for u in chosen for _ in range(per_user)
            ],
            "targets": [{"user": u["index"], "number": u["numbers"][0]} for u in chosen],
            "externals": list(dataset.external_pool(self.plan.size)[-2000:]),
            "signing_key": bytes(self.key).hex(),
            "rate": rate,
            "duration": self.plan.duration,
            "settle": 2.0,
            "grace": 10.0,
            "open_timeout": 90,
            "post_wait": self.plan.duration + (20 if self.args.quick else 60),
        }
        cfg_path = self.work / f"{name}.json"
        out_path = self.work / f"{name}.result.json"
        cfg_path.write_bytes(orjson.dumps(config))
        log(f"{name}: {len(config['streams'])} streams, {rate:.0f} webhooks/s")
        waited = cpu.wait_quiet(self.args.quiet_wait)
        watch = cpu.Watch(self.backend_pids)
        watch.start()
        subprocess.run(
            [sys.executable, "-m", "bench.sse_client", str(cfg_path), str(out_path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
            timeout=self.plan.duration + 400,
        )
        result = orjson.loads(out_path.read_bytes())
        result["cpu"] = {**watch.stop(), "waited_for_quiet_s": round(waited, 1)}
        result["rps"] = result["webhook_rate"]
        result["errors"] = (
            result["missing"]
            + result["webhook_errors"]
            + result["streams_failed"]
            + result["streams_dropped"]
        )
        result["workers"] = 1 if name == "sse_1000" else self.plan.workers
        self.results["scenarios"][name] = result
        log(
            f"{name}: webhook->event p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"{result['deliveries']}/{result['deliveries_expected']} delivered, "
            f"errors {result['errors']}"
        )

    def roundtrips(self) -> None:
        log("round trips: the app in-process behind a counting PostgreSQL proxy")
        counted = asyncio.run(
            roundtrips.measure(
                self.run_db,
                REDIS_URL,
                f"{self.prefix}rt:",
                self.meta["encryption_keys"],
                self.world,
            )
        )
        self.results["round_trips"] = counted
        for case, data in counted.items():
            log(
                f"round trips {case}: {data['postgres_round_trips']:.1f} PostgreSQL, "
                f"{data['sqlalchemy_statements']:.1f} ORM statements, "
                f"{data['redis_commands']:.1f} Redis"
            )

    def profile(self, app: server.Server) -> None:
        seconds = self.plan.profile_seconds
        pid = app.worker_pids()[0]
        inbound_rps = self.results["scenarios"].get("inbound", {}).get("rps", 2000)
        cases: list[tuple[str, Callable[[], Path]]] = [
            (
                "inbound",
                lambda: self.webhooks("profile-inbound", int(inbound_rps * (seconds + 6)), 9),
            ),
            (
                "history_hot",
                lambda: self.requests_file(
                    "profile-history",
                    loadgen.history_requests(self.world, 5000, 10, hot=True),
                ),
            ),
            (
                "send",
                lambda: self.requests_file(
                    "profile-send", loadgen.send_requests(self.world, 20000, 12)
                ),
            ),
            # The inbox scenario's own requests (it runs before the profiles).
            ("inbox", lambda: self.inbox_requests or Path()),
        ]
        cases = [(name, make) for name, make in cases if name in self.only]
        if self.inbox_requests is None:
            cases = [(name, make) for name, make in cases if name != "inbox"]
        self.results["profiles"] = {}
        for name, make in cases:
            file = make()
            holder: dict[str, Any] = {}

            def load(file: Path = file, holder: dict[str, Any] = holder) -> None:
                holder["result"] = loadgen.run_wrk(
                    app.url, file, duration=seconds + 4, connections=self.plan.connections
                )

            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(2)
            raw = self.out.parent / f"profile-{name}.txt"
            spy = profiling.record(pid, seconds, raw)
            _, err = spy.communicate(timeout=seconds + 60)
            thread.join()
            if spy.returncode != 0 or not raw.exists():
                log(f"profile {name}: py-spy failed: {err.decode(errors='replace')[-500:]}")
                continue
            summary = profiling.summarize(raw)
            text = profiling.render(
                f"{name} (one of {self.plan.workers} workers, pid {pid})", summary
            )
            (self.out.parent / f"profile-{name}.summary.txt").write_text(text)
            self.results["profiles"][name] = {
                "raw": str(raw),
                "summary": str(self.out.parent / f"profile-{name}.summary.txt"),
                "samples": summary["samples"],
                "self_by_package": summary["self_by_package"][:8],
                "inclusive_app_functions": summary["inclusive_app_functions"][:12],
            }
            log(f"profile {name}: {summary['samples']} samples -> {raw.name}")

    # -- orchestration --------------------------------------------------------------

    def step(self, name: str, action: Callable[[], Any]) -> None:
        """Run one scenario; a failure is recorded and the run goes on."""
        try:
            action()
        except Exception as exc:
            log(f"{name} FAILED: {exc!r}")
            self.results.setdefault("failures", {})[name] = repr(exc)[:2000]

    def run(self) -> dict[str, Any]:
        plan = self.plan
        started = time.perf_counter()
        self.results["machine"] = machine()
        self.results["settings"] = {
            "workers": plan.workers,
            "uvicorn_flags": server.uvicorn_flags(plan.workers),
            "duration_s": plan.duration,
            "warmup_s": plan.warmup,
            "wrk_connections": plan.connections,
            "deployment": self.args.deployment,
            "wrk_threads": 1,
            "mode": "quick" if self.args.quick else "full",
        }
        self.prepare()
        sc = self.results["scenarios"]
        logs_from = {name: _size(self.logs / name) for name in _APP_LOGS}
        app = self.start_app(plan.workers)
        self.app = app
        self.start_worker()
        try:
            if "floor" in self.only or "inbound" in self.only:
                self.step("floor_and_inbound", lambda: self.floor_and_inbound(app))
            self.step("history", lambda: self.history(app))
            if "inbox" in self.only:
                self.step("inbox", lambda: self.inbox(app))
            if "send" in self.only:
                self.step("send", lambda: self.send(app))
            if "delivery" in self.only:
                self.step("delivery", self.delivery)
            if "sse" in self.only:
                self.step("sse", lambda: self.sse(app, "sse", plan.sse_users, 1, plan.sse_rate))
            if self.args.profile:
                self.step("profile", lambda: self.profile(app))
        finally:
            app.stop()
            self.app = None
            self.stop_worker()
        if "roundtrips" in self.only:
            self.step("roundtrips", self.roundtrips)
        if "sse_1000" in self.only:
            one = self.start_app(1, "app-1-worker")
            try:
                self.step(
                    "sse_1000",
                    lambda: self.sse(
                        one,
                        "sse_1000",
                        plan.sse_1000_users,
                        plan.sse_1000_per_user,
                        plan.sse_1000_rate,
                    ),
                )
            finally:
                one.stop()
        if "floor" in sc and "inbound" in sc and sc["floor"]["rps"]:
            ratio = sc["inbound"]["rps"] / sc["floor"]["rps"]
            self.results["inbound_over_floor"] = round(ratio, 3)
        self.results["app_warnings"] = {
            name: _warnings(self.logs / name, offset) for name, offset in logs_from.items()
        }
        self.results["checks"] = checks(self.results)
        self.results["total_seconds"] = round(time.perf_counter() - started, 1)
        return self.results

    def cleanup(self) -> None:
        if self.app is not None:
            self.app.stop()
        self.stop_worker()
        if not self.args.keep_db:
            asyncio.run(seed.drop_database(self.run_db))
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        if not self.args.keep_files:
            for path in self.work.iterdir():
                path.unlink()
            self.work.rmdir()


# What the app's processes log at WARNING and above must be nothing: a warning under load
# is work left undone (an event not published, a store retried) that the numbers hide.
_APP_LOGS = ("app.log", "worker.log", "app-1-worker.log")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _warnings(path: Path, offset: int) -> dict[str, int]:
    """WARNING-or-worse log lines written to `path` after `offset`, counted by message."""
    found: dict[str, int] = {}
    if not path.exists():
        return found
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                key = f"{entry['level']}: {entry.get('msg', '')}"
                found[key] = found.get(key, 0) + 1
    return found


def checks(results: dict[str, Any]) -> dict[str, Any]:
    sc = results["scenarios"]
    out: dict[str, Any] = {}
    if "app_warnings" in results:
        out["app_logged_no_warnings"] = not any(results["app_warnings"].values())
    default = results.get("settings", {}).get("deployment") == "default"
    floor = sc.get("floor", {}).get("rps")
    if "inbound_over_floor" in results:
        goal = 0.5 if default else 0.6
        out[f"inbound_at_least_{int(goal * 100)}pct_of_floor"] = (
            results["inbound_over_floor"] >= goal
        )
    if "inbound" in sc:
        out["inbound_p99_under_200ms"] = sc["inbound"]["p99_ms"] < 200
        out["inbound_outbox_drained_within_60s"] = _drained(sc["inbound"], 60)
    if "send" in sc and floor:
        results["send_over_floor"] = round(sc["send"]["rps"] / floor, 3)
        out["send_at_least_40pct_of_floor"] = results["send_over_floor"] >= 0.4
        out["send_no_errors"] = sc["send"]["errors"] == 0
        out["send_outbox_drained_within_60s"] = _drained(sc["send"], 60)
    if "delivery" in sc and floor and results.get("settings", {}).get("workers") == 1:
        results["delivery_over_floor"] = round(sc["delivery"]["rps"] / floor, 3)
        out["delivery_at_least_35pct_of_floor"] = results["delivery_over_floor"] >= 0.35
    if "history_paced" in sc:
        out["history_p99_under_10ms"] = sc["history_paced"]["p99_ms"] < 10
    if "inbox_paced" in sc:
        out["inbox_p99_under_20ms"] = sc["inbox_paced"]["p99_ms"] < 20
    return out


def _drained(scenario: dict[str, Any], seconds: float) -> bool:
    after = scenario.get("outbox_after") or {}
    return bool(after) and after.get("left", 1) == 0 and after.get("seconds", 1e9) <= seconds


# ---------------------------------------------------------------------------------
# Output

TABLE_ROWS = (
    ("floor", "floor: bare ASGI, parse + INSERT + SET NX EX"),
    ("inbound", "inbound Telnyx webhook (signed)"),
    ("send", "POST /v1/messages to a phone number"),
    ("history_hot", "history, newest 50 (hot conv.), saturated"),
    ("history_paced", "history, newest 50 (hot conv.), 50% load"),
    ("history_unloaded", "history, newest 50 (hot conv.), 1 at a time"),
    ("history_random", "history, newest 50 (random conv.)"),
    ("inbox", "inbox list, filters mixed, saturated"),
    ("inbox_paced", "inbox list, filters mixed, 50% load"),
    ("delivery", "delivery of queued messages (simulator)"),
    ("sse", "webhook -> SSE event"),
    ("sse_1000", "webhook -> SSE event, 1,000 streams, 1 process"),
)


def table(results: dict[str, Any]) -> str:
    sc = results["scenarios"]
    lines = [
        "| scenario | req/s | p50 ms | p99 ms | errors | CPU ms/req: Python, PostgreSQL |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, title in TABLE_ROWS:
        if key not in sc:
            continue
        s = sc[key]
        rps = f"{s['rps']:.0f}"
        if key == "delivery":
            rps += " msg/s"
        elif key.startswith("sse"):
            rps += f" webhooks/s, {s['streams_open']}/{s['streams']} streams up"
        cpu_ms = s.get("cpu_ms_per_request")
        per_request = f"{cpu_ms['python']:.2f}, {cpu_ms['postgres']:.2f}" if cpu_ms else ""
        lines.append(
            f"| {title} | {rps} | {s['p50_ms']} | {s['p99_ms']} | {s['errors']} | {per_request} |"
        )
    extra = []
    if "inbound_over_floor" in results:
        extra.append(f"inbound / floor throughput: **{results['inbound_over_floor']:.3f}**")
    for name, ok in results.get("checks", {}).items():
        extra.append(f"{name}: {'yes' if ok else 'NO'}")
    return "\n".join(lines) + ("\n\n" + "; ".join(extra) if extra else "") + "\n"


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    d = results["dataset"]
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {m['postgresql']}, Redis {m['redis']}, {m['wrk']}; "
        f"uvicorn {s['workers']} workers ({' '.join(s['uvicorn_flags'][2:])}); "
        f"wrk 1 thread, {s['wrk_connections']} connections, {s['duration_s']:.0f} s per "
        f"scenario after {s['warmup_s']:.0f} s warm-up; {d['users']} users, "
        f"{d['phone_numbers']} numbers, {d['messages']:,} messages "
        f"({d['hot_conversation_messages']:,} in the hot conversation); app at {m['git_commit']}"
    )


def update_readme(results: dict[str, Any]) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = README.read_text()
    if start not in text or end not in text:
        return
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    block = f"{start}\nRun of {stamp}: {machine_line(results)}.\n\n{table(results)}{end}"
    head, rest = text.split(start, 1)
    README.write_text(head + block + rest.split(end, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data, short runs (smoke)")
    parser.add_argument(
        "--workers", type=int, default=None, help="uvicorn workers (default: cores)"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--rounds", type=int, default=None, help="floor/inbound alternations (full: 2)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="before each measurement, wait up to this long for other load to stop",
    )
    parser.add_argument("--out", default=str(Path("bench") / "results" / "latest.json"))
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--profile", action="store_true", help="py-spy one worker afterwards")
    parser.add_argument("--reseed", action="store_true", help="drop the cached seed first")
    parser.add_argument("--keep-db", action="store_true", help="keep this run's database")
    parser.add_argument("--keep-files", action="store_true", help="keep request files")
    parser.add_argument("--update-readme", action="store_true", help="write the table there")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    parser.add_argument(
        "--deployment",
        choices=("default", "split"),
        default="default",
        help="default: each web process delivers (RUN_WORKER's default); split: "
        "RUN_WORKER=false and one `python -m app worker` process",
    )
    args = parser.parse_args()
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        bench.cleanup()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print()
    print(machine_line(results))
    print()
    print(table(results))
    print(f"results: {out} ({results['total_seconds']:.0f} s)")
    if args.update_readme:
        update_readme(results)
    if args.check and not all(results["checks"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
