"""The embedded default a newcomer meets first: SQLite, in-process limiter and event bus,
the simulator carrier, a generated key file. No PostgreSQL or Redis settings at all."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.carriers.simulator import SimulatorCarrier
from app.context import AppContext
from app.settings import Settings
from tests.conftest import running_app
from tests.support import (
    OPERATOR_TOKEN,
    Tenant,
    closed_today,
    eventually,
    hours_around_now,
    new_number,
)
from tests.system.carrier_kit import send_batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[tuple[AppContext, httpx.AsyncClient]]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",  # type: ignore[call-arg]
        operator_token=OPERATOR_TOKEN,
        worker_poll_seconds=0.1,
    )
    assert settings.is_sqlite and settings.redis_url is None
    async with running_app(settings) as (app, client):
        yield app.state.ctx, client


async def test_embedded_default_walks_the_main_flows(
    embedded: tuple[AppContext, httpx.AsyncClient], tmp_path: Path
) -> None:
    ctx, client = embedded
    assert isinstance(ctx.carrier, SimulatorCarrier)
    key_file = tmp_path / "data" / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    tenant = await Tenant.create(client)
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.add_user("carol", extension="103")
    await tenant.set_auto_responder(bob, "Auto: we will call you back.")

    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=bob,
        expect=201,
        json={
            "to": [{"extension": "103"}, {"phone_number": new_number()}],
            "body": "secret-body-1",
        },
    )
    outbound = next(m for m in r.json()["messages"] if m["direction"] == "outbound")

    async def delivered() -> bool:
        m = await tenant.call("GET", f"/v1/messages/{outbound['id']}", as_=bob, expect=200)
        return bool(m.json()["status"] == "delivered")

    await eventually(delivered)

    patient = new_number()
    assert bob.outbound_sms_number
    for text in ("first", "second"):
        await ctx.carrier.inject_inbound(
            from_number=patient, to_number=bob.outbound_sms_number, text=text
        )
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None
    msgs = await tenant.messages(bob, conv["id"])
    reasons = [
        m["auto_reply_decision"]["reason"] for m in reversed(msgs) if m["direction"] == "inbound"
    ]
    assert reasons == ["sent", "rate_limited"]
    assert [m["body"] for m in msgs if m["auto_reply"]] == ["Auto: we will call you back."]

    raw = (tmp_path / "data" / "messaging.db").read_bytes()
    for wal in (tmp_path / "data").glob("messaging.db-wal"):
        raw += wal.read_bytes()
    assert b"secret-body-1" not in raw and b"we will call you back" not in raw

    ready = await client.get("/readyz")
    assert ready.json()["checks"] == {"database": "ok"}


async def test_embedded_default_answers_by_the_hours_asked_for(
    embedded: tuple[AppContext, httpx.AsyncClient], tmp_path: Path
) -> None:
    """A user's auto-responder within and outside its hours, and a group's after-hours
    reply, on SQLite with the in-process window."""
    ctx, client = embedded
    tenant = await Tenant.create(client)
    bob, line = await tenant.add_auto_replying_user("bob", "102", "Bob is out.")
    await tenant.set_auto_responder(bob, "Bob is out.", schedule=hours_around_now(open_now=True))
    await tenant.add_user("carol", extension="103")
    desk_line = await tenant.add_number("200")
    group = await tenant.add_group("Front desk", "200", ["carol"], desk_line)
    await tenant.call(
        "PUT",
        f"/v1/groups/{group['id']}/after-hours",
        expect=200,
        json={"enabled": True, "text": "secret-night-text", "schedule": closed_today()},
    )
    first, second, third = new_number(), new_number(), new_number()
    await ctx.carrier.inject_inbound(from_number=first, to_number=line, text="hi bob")
    await ctx.carrier.inject_inbound(from_number=second, to_number=desk_line, text="hi desk")
    await tenant.set_auto_responder(bob, "Bob is out.", schedule=hours_around_now(open_now=False))
    await ctx.carrier.inject_inbound(from_number=third, to_number=line, text="hi again")

    async def decided(member: Any, patient: str) -> list[Any]:
        conv = await tenant.sms_conversation(member, patient)
        assert conv is not None
        return [
            (m["direction"], m["auto_reply_decision"] or m["from_number"])
            for m in reversed(await tenant.messages(member, conv["id"]))
        ]

    carol = tenant.users["carol"]
    assert await decided(bob, first) == [("inbound", {"sent": False, "reason": "within_hours"})]
    assert await decided(carol, second) == [
        ("inbound", {"sent": True, "reason": "sent"}),
        ("outbound", desk_line),
    ]
    assert await decided(bob, third) == [
        ("inbound", {"sent": True, "reason": "sent"}),
        ("outbound", line),
    ]
    raw = (tmp_path / "data" / "messaging.db").read_bytes()
    for wal in (tmp_path / "data").glob("messaging.db-wal"):
        raw += wal.read_bytes()
    assert b"secret-night-text" not in raw


async def test_embedded_default_schedules_cancels_and_sends_when_due(
    embedded: tuple[AppContext, httpx.AsyncClient],
) -> None:
    """Scheduled messages on SQLite: stored at once, listed soonest first, one canceled
    and never sent, one sent when due; an opt-out meanwhile fails a third."""
    ctx, client = embedded
    assert isinstance(ctx.carrier, SimulatorCarrier)
    tenant = await Tenant.create(client)
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number
    now = datetime.now(UTC)
    opted_out = new_number()
    ids = []
    for seconds, number in ((3600, new_number()), (2, new_number()), (3, opted_out)):
        r = await tenant.call(
            "POST",
            "/v1/messages",
            as_=bob,
            expect=201,
            json={
                "to": [{"phone_number": number}],
                "body": "See you tomorrow",
                "send_at": (now + timedelta(seconds=seconds)).isoformat(),
            },
        )
        assert r.json()["messages"][0]["status"] == "scheduled"
        ids.append(r.json()["messages"][0]["id"])
    later, due, stopped = ids
    await ctx.carrier.inject_inbound(
        from_number=opted_out, to_number=bob.outbound_sms_number, text="STOP"
    )
    r = await tenant.call(
        "GET", "/v1/messages", as_=bob, expect=200, params={"status": "scheduled"}
    )
    assert [m["id"] for m in r.json()["items"]] == [due, stopped, later]
    r = await tenant.call("POST", f"/v1/messages/{later}/cancel", as_=bob, expect=200)
    assert r.json()["status"] == "canceled"

    async def status(message_id: str) -> Any:
        r = await tenant.call("GET", f"/v1/messages/{message_id}", as_=bob, expect=200)
        return (r.json()["status"], r.json()["error_code"])

    async def settled() -> bool:
        return await status(due) == ("delivered", None) and (await status(stopped))[0] == "failed"

    await eventually(settled)
    assert await status(stopped) == ("failed", "recipient_opted_out")
    assert await status(later) == ("canceled", None)
    assert [s.reference for s in ctx.carrier.sent if s.reference in ids] == [due]


async def test_embedded_default_runs_the_shared_inbox(
    embedded: tuple[AppContext, httpx.AsyncClient], tmp_path: Path
) -> None:
    """Contacts, status and assignee, reopening, notes, filters and paging on SQLite."""
    ctx, client = embedded
    tenant = await Tenant.create(client)
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    await tenant.add_user("carol", extension="103")
    assert bob.outbound_sms_number and isinstance(ctx.carrier, SimulatorCarrier)
    patient, other = new_number(), new_number()
    name = "Esperanza Quiñones-Villalobos"
    r = await tenant.call(
        "POST", "/v1/contacts", as_=bob, expect=201, json={"phone_number": patient, "name": name}
    )
    contact_id = r.json()["id"]
    found = await tenant.call("GET", "/v1/contacts", as_=bob, expect=200, params={"q": "quinon"})
    assert [c["id"] for c in found.json()["items"]] == [contact_id]
    r = await tenant.call("GET", "/v1/contacts", as_=bob, params={"q": "olan"})
    assert r.status_code == 200 and r.json()["items"] == []

    for number, text in ((patient, "is my refill ready?"), (other, "hello")):
        await ctx.carrier.inject_inbound(
            from_number=number, to_number=bob.outbound_sms_number, text=text
        )
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None
    assert conv["contact"] == {"id": contact_id, "name": name}
    assert conv["last_message"]["body"] == "is my refill ready?"
    path = f"/v1/conversations/{conv['id']}"
    r = await tenant.call("PATCH", path, as_=bob, json={"assignee": "carol"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_assignee"
    r = await tenant.call(
        "PATCH", path, as_=bob, expect=200, json={"status": "closed", "assignee": "bob"}
    )
    assert (r.json()["status"], r.json()["assignee"]) == ("closed", "bob")

    note = await tenant.call(
        "POST", f"{path}/notes", as_=bob, expect=201, json={"body": "secret-note-1"}
    )
    assert note.json()["direction"] == "note"
    assert (await tenant.sms_conversation(bob, patient) or {})["status"] == "closed"

    async def ids(**params: str) -> list[str]:
        page = await tenant.call("GET", "/v1/conversations", as_=bob, expect=200, params=params)
        return [c["id"] for c in page.json()["items"]]

    other_id = (await tenant.sms_conversation(bob, other) or {})["id"]
    assert await ids(status="closed") == [conv["id"]]
    assert await ids(assignee="me") == [conv["id"]]
    assert await ids(assignee="none") == [other_id]
    assert await ids(q="villa") == [conv["id"]]
    assert await ids(q=other[-8:]) == [other_id]
    assert await ids(unread="true") == [conv["id"], other_id]

    # Paging one by one while the conversation on the next page gets a new message.
    first = (await tenant.call("GET", "/v1/conversations", as_=bob, params={"limit": 1})).json()
    assert [c["id"] for c in first["items"]] == [conv["id"]]
    await ctx.carrier.inject_inbound(
        from_number=other, to_number=bob.outbound_sms_number, text="me again"
    )
    rest = await tenant.call(
        "GET", "/v1/conversations", as_=bob, params={"limit": 1, "cursor": first["next_cursor"]}
    )
    assert [c["id"] for c in rest.json()["items"]] == [other_id]
    assert rest.json()["next_cursor"] is None
    # The patient's new text reopens it.
    await ctx.carrier.inject_inbound(
        from_number=patient, to_number=bob.outbound_sms_number, text="still there?"
    )
    assert (await tenant.sms_conversation(bob, patient) or {})["status"] == "open"

    # A reply after the note reaches the carrier; the note never does.
    await tenant.call("POST", f"{path}/messages", as_=bob, expect=201, json={"body": "yes"})
    await eventually(lambda: _sent(ctx.carrier, "yes"))
    assert not any("secret-note-1" in s.body for s in ctx.carrier.sent)

    raw = (tmp_path / "data" / "messaging.db").read_bytes()
    for wal in (tmp_path / "data").glob("messaging.db-wal"):
        raw += wal.read_bytes()
    for secret in ("Esperanza", "Quiñones", "Villalobos", "secret-note-1"):
        assert secret.encode() not in raw and secret.encode("utf-16-le") not in raw


async def _sent(carrier: SimulatorCarrier, body: str) -> bool:
    return any(s.body == body for s in carrier.sent)


async def test_embedded_event_bus_delivers_to_the_recipient_only(
    embedded: tuple[AppContext, httpx.AsyncClient],
) -> None:
    ctx, client = embedded
    tenant = await Tenant.create(client)
    alice, bob = await tenant.add_user("alice"), await tenant.add_user("bob")
    carol = await tenant.add_user("carol")
    got: dict[str, list[Any]] = {"bob": [], "carol": []}
    subs = {
        name: ctx.events.subscribe(m.id, tenant.id, None)
        for name, m in (("bob", bob), ("carol", carol))
    }
    for sub in subs.values():
        await sub.__aenter__()
    try:
        await tenant.call(
            "POST",
            "/v1/messages",
            as_=alice,
            expect=201,
            json={"to": [{"username": "bob"}], "body": "ping"},
        )
        import asyncio

        item = await asyncio.wait_for(subs["bob"].__anext__(), 10)
        got["bob"].append(item)
        assert item.type == "message.created" and item.data["body"] == "ping"
        assert subs["carol"].queued == 0
    finally:
        for sub in subs.values():
            await sub.__aexit__(None, None, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _follow_events(base_url: str, headers: dict[str, str]) -> list[str]:
    """The bodies of the messages an event stream shows, read on a thread from now on."""
    seen: list[str] = []

    def read() -> None:
        with (
            httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=None)) as http,
            http.stream("GET", "/v1/events", headers=headers) as events,
        ):
            try:
                for line in events.iter_lines():
                    if line.startswith("data:"):
                        body = json.loads(line[5:]).get("body")
                        if body:
                            seen.append(body)
            except httpx.HTTPError:
                return  # the server stopped at the end of the test

    threading.Thread(target=read, daemon=True).start()
    return seen


def test_run_command_serves_docs_and_prints_a_working_token(tmp_path: Path) -> None:
    """What the README's run command does: `python -m app serve --demo`."""
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "CARRIER", "ENCRYPTION_KEYS"))
    }
    env["DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--demo", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        deadline = time.monotonic() + 60
        while "/v1/simulator/sent" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            banner += line
        match = re.search(r"Member token:\s+(\S+)", banner)
        assert match, banner
        assert f"http://127.0.0.1:{port}/docs" in banner
        token = match.group(1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
            assert http.get("/docs").status_code == 200
            me = http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["username"] == "bob"
            # The demo shows schedules: alice's auto-responder, the front desk's reply.
            admin_token = re.search(r"Admin token:\s+(\S+)", banner)
            assert admin_token, banner
            admin = {"Authorization": f"Bearer {admin_token.group(1)}"}
            mine = http.get("/v1/me/auto-responder", headers=admin).json()
            assert mine["schedule"]["weekly"]["mon"] == [["08:00", "17:00"]]
            (desk,) = http.get("/v1/groups", headers=admin).json()["items"]
            night = http.get(f"/v1/groups/{desk['id']}/after-hours", headers=admin).json()
            assert night["enabled"] and night["schedule"]["timezone"] == "America/New_York"

            # The demo's shared inbox: a contact, a conversation assigned to bob, a note.
            inbox = http.get(
                "/v1/conversations",
                params={"assignee": "me"},
                headers={"Authorization": f"Bearer {token}"},
            ).json()["items"]
            assert [(c["contact"]["name"], c["last_message"]["direction"]) for c in inbox] == [
                ("Maria Gonzalez", "note")
            ]

            # The README's first steps: the banner says what runs, then bob's live events
            # show a patient's text made to arrive through the simulator, and its
            # auto-reply, which the simulator's sent list shows too.
            assert "(simulator carrier, SQLite file " in banner, banner
            number = re.search(r"(\+1\d{10}) routes to bob", banner)
            assert number, banner
            bob = {"Authorization": f"Bearer {token}"}
            seen = _follow_events(f"http://127.0.0.1:{port}", bob)
            deadline = time.monotonic() + 60
            while "ping" not in seen and time.monotonic() < deadline:
                # Until the stream is surely subscribed (no assumption about how soon).
                http.post(
                    "/v1/messages",
                    headers=admin,
                    json={"to": [{"username": "bob"}], "body": "ping"},
                )
                time.sleep(0.2)
            r = http.post(
                "/v1/simulator/inbound",
                headers=bob,
                json={"from_number": "+12125550111", "to_number": number.group(1), "text": "Hello"},
            )
            assert r.status_code == 201 and r.json()["auto_reply_decision"]["sent"], r.text
            reply = "Thanks for your message. The clinic will reply during opening hours."
            while not {"Hello", reply} <= set(seen) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert {"Hello", reply} <= set(seen), seen
            # Stored (and shown) at once, handed to the carrier by the worker soon after.
            sent: list[tuple[str, str]] = []
            while not sent and time.monotonic() < deadline:
                items = http.get("/v1/simulator/sent", headers=bob).json()["items"]
                sent = [(s["to_number"], s["body"]) for s in items]
                time.sleep(0.1)
            assert sent == [("+12125550111", reply)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_embedded_default_limits_tokens_and_bad_tokens_in_process(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",  # type: ignore[call-arg]
        operator_token=OPERATOR_TOKEN,
        api_rate_limit_per_minute=4,
        auth_failure_limit_per_minute=2,
    )
    async with running_app(settings) as (_, client):
        tenant = await Tenant.create(client)
        bob, carol = await tenant.add_user(), await tenant.add_user()
        for _ in range(4):
            await tenant.call("GET", "/v1/me", as_=bob, expect=200)
        r = await tenant.call("GET", "/v1/me", as_=bob, expect=429)
        assert r.json()["error"]["code"] == "too_many_requests"
        assert r.json()["error"]["details"]["limited_by"] == "token"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        await tenant.call("GET", "/v1/me", as_=carol, expect=200)

        for token in ("msk_wrong1", "msk_wrong2"):
            r = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401
        r = await tenant.call("GET", "/v1/me", as_=carol, expect=429)
        assert r.json()["error"]["details"]["limited_by"] == "client_address"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert (await client.get("/healthz")).status_code == 200


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("first_run", [True, False], ids=["new", "existing"])
async def test_embedded_database_and_its_wal_and_shm_files_are_private(
    tmp_path: Path, first_run: bool
) -> None:
    data = tmp_path / "data"
    # The usual umask, under which files are created readable by every local user.
    umask = os.umask(0o022)
    try:
        if not first_run:
            # Left by an earlier version: a world-readable directory and database.
            data.mkdir(mode=0o755)
            (data / "messaging.db").touch(mode=0o644)
            assert _mode(data) == 0o755 and _mode(data / "messaging.db") == 0o644
        settings = Settings(
            _env_file=None,
            data_dir=data,  # type: ignore[call-arg]
            operator_token=OPERATOR_TOKEN,
        )
        async with running_app(settings) as (_, client):
            tenant = await Tenant.create(client)
            await tenant.add_user("bob", extension="102")
            files = {
                name: _mode(data / name)
                for name in ("messaging.db", "messaging.db-wal", "messaging.db-shm")
            }
            assert files == dict.fromkeys(files, 0o600)
            assert _mode(data) == 0o700
            assert _mode(data / "encryption.key") == 0o600
    finally:
        os.umask(umask)


def _embedded_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DATABASE_URL", "REDIS_URL", "CARRIER", "ENCRYPTION_KEYS", "TELNYX_", "TWILIO_")
        )
    }
    return {**env, "DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"CARRIER": "telnyx"}, "TELNYX_API_KEY"),
        ({"CARRIER": "twilio", "TWILIO_AUTH_TOKEN": "x"}, "TWILIO_ACCOUNT_SID"),
        ({"CARRIER": "carrier-pigeon"}, "CARRIER"),
        ({"DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/x"}, "ENCRYPTION_KEYS"),
    ],
)
@pytest.mark.parametrize("command", ["uvicorn", "serve"])
def test_a_missing_or_bad_setting_at_start_up_is_one_clear_line(
    tmp_path: Path, settings: dict[str, str], named: str, command: str
) -> None:
    args = {
        "uvicorn": ["-m", "uvicorn", "app.main:app", "--port", str(_free_port())],
        "serve": ["-m", "app", "serve", "--port", str(_free_port())],
    }[command]
    done = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=_embedded_env(tmp_path, **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert lines[0].startswith("error: "), lines


def test_run_command_checks_its_port_before_printing_tokens(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "app", "serve", "--demo", "--port", str(port)],
            cwd=tmp_path,
            env=_embedded_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert "token" not in done.stdout.lower(), done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"port {port}" in lines[0] and "--port" in lines[0], done.stderr


def test_the_banner_names_the_carrier_and_database_in_use(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "demo"],
        cwd=tmp_path,
        env=_embedded_env(tmp_path, CARRIER="telnyx", TELNYX_API_KEY="KEY"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "(telnyx carrier, SQLite file " in done.stdout, done.stdout
    assert "simulator" not in done.stdout, done.stdout


async def test_embedded_backlog_waits_queued_for_its_slots_and_goes_once_each(
    tmp_path: Path,
) -> None:
    """On SQLite too, a number's backlog waits for its send slots in the worker (`queued`,
    its lease lengthened) and each message goes once, at its slot."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",  # type: ignore[call-arg]
        operator_token=OPERATOR_TOKEN,
        worker_poll_seconds=0.1,
        carrier_send_rate_per_number=0.5,  # slots 2 s apart
    )
    async with running_app(settings) as (app, client):
        carrier = app.state.ctx.carrier
        assert isinstance(carrier, SimulatorCarrier)
        tenant = await Tenant.create(client)
        bob, ids = await send_batch(tenant, 3, "paced")

        async def first_sent() -> bool:
            return await _sent(carrier, "paced #0")

        await eventually(first_sent)
        last = await tenant.call("GET", f"/v1/messages/{ids[2]}", as_=bob, expect=200)
        assert last.json()["status"] == "queued"  # its slot is 4 s after the first's

        async def all_delivered() -> bool:
            for mid in ids:
                m = await tenant.call("GET", f"/v1/messages/{mid}", as_=bob, expect=200)
                if m.json()["status"] != "delivered":
                    return False
            return True

        await eventually(all_delivered, timeout=30)
        sends = [s for s in carrier.sent if s.body.startswith("paced")]
    assert sorted(s.body for s in sends) == ["paced #0", "paced #1", "paced #2"]
    times = sorted(s.accepted_at for s in sends)
    assert all(b - a >= 2 - 0.5 for a, b in itertools.pairwise(times)), times
