"""The OpenAPI document as client generators and linters read it.

A Python client is generated from the served `/openapi.json` with a real generator
(`openapi-python-client`): its functions and models must carry the API's names (no
paths, methods or generics in them), it must leave out the carriers' webhooks, and it
must work against the service, its typed errors included. Redocly's linter must find no
error in the document. The generator is a dev dependency; Redocly's CLI comes from the
npm registry (`npx`), pinned.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Tenant, new_number

# Redocly's CLI 2.x runs on Node 20 and later; 1.34 on older ones (Debian 12's is 18).
REDOCLY = {True: "@redocly/cli@2.77.0", False: "@redocly/cli@1.34.20"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def document(client: httpx.AsyncClient, tmp_path: Path) -> Path:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    path = tmp_path / "openapi.json"
    path.write_text(r.text)
    return path


async def run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a tool on a thread of its own: the session's app shares this event loop."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return await asyncio.to_thread(
        subprocess.run,
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_redocly_finds_no_error(document: Path) -> None:
    npx = shutil.which("npx")
    if npx is None:
        pytest.fail("npx is not installed: apt-get install npm (Debian)")
    node = await run(["node", "--version"], cwd=document.parent)
    recent = int(node.stdout.strip().lstrip("v").split(".")[0]) >= 20
    linted = await run(
        [npx, "--yes", REDOCLY[recent], "lint", str(document), "--format=json"],
        cwd=document.parent,
    )
    start = linted.stdout.find("{")
    assert start >= 0, linted.stdout + linted.stderr
    report = json.loads(linted.stdout[start:])
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert errors == [], json.dumps(errors, indent=1)[:4000]
    assert report["totals"]["errors"] == 0


@pytest.fixture
async def generated(document: Path) -> AsyncIterator[Path]:
    """The package openapi-python-client generates from the document, importable."""
    config = document.parent / "generator.json"
    config.write_text(json.dumps({"post_hooks": [], "package_name_override": "messaging_client"}))
    out = document.parent / "client"
    made = await run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(document),
            "--config",
            str(config),
            "--output-path",
            str(out),
            "--meta",
            "none",
        ],
        cwd=document.parent,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert "Warning" not in made.stdout, made.stdout
    sys.path.insert(0, str(out.parent))
    try:
        yield out
    finally:
        sys.path.remove(str(out.parent))
        for name in [m for m in sys.modules if m.split(".")[0] == "client"]:
            del sys.modules[name]


def test_generated_client_is_named_after_the_api(generated: Path) -> None:
    functions = {p.stem for p in (generated / "api").rglob("*.py") if p.stem != "__init__"}
    models = {p.stem for p in (generated / "models").glob("*.py") if p.stem != "__init__"}
    for name in (
        "send_message",
        "get_message",
        "list_conversations",
        "reply_to_conversation",
        "list_messages",
        "create_contact",
        "get_me",
        "stream_events",
        "check_liveness",
        "check_readiness",
    ):
        assert name in functions, sorted(functions)
    assert not {f for f in functions if "_v1_" in f or f.endswith(("_get", "_post", "_patch"))}
    # Carriers call the webhooks; a client of the API never does.
    assert not {f for f in functions if "webhook" in f or "twilio" in f or "telnyx" in f}
    for name in ("message_page", "conversation_page", "contact_page", "liveness", "readiness"):
        assert name in models, sorted(models)
    assert {
        "send_message_error",
        "send_message_error_detail",
        "field_problem",
        "rate_limit",
    } <= models
    assert not {m for m in models if m.startswith(("page_", "healthz", "readyz", "body_"))}
    assert not {m for m in models if "response_" in m or "_get_" in m}
    # The event stream's events, one model each.
    assert {"message_created_event", "conversation_updated_event", "resync_event"} <= models


async def test_generated_client_works_against_the_service(
    generated: Path, app_client: tuple[Any, httpx.AsyncClient], tenant: Tenant
) -> None:
    app, _ = app_client
    client_pkg = importlib.import_module("client")
    send_message = importlib.import_module("client.api.messages.send_message")
    get_message = importlib.import_module("client.api.messages.get_message")
    list_conversations = importlib.import_module("client.api.conversations.list_conversations")
    models = importlib.import_module("client.models")

    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    api = client_pkg.AuthenticatedClient(base_url="http://testserver", token=bob.token)
    api.set_async_httpx_client(
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {bob.token}"},
        )
    )
    sent = await send_message.asyncio_detailed(
        client=api,
        body=models.SendMessage.from_dict(
            {"to": [{"phone_number": new_number()}], "body": "Your results are ready."}
        ),
    )
    assert sent.status_code == 201, sent.content
    assert isinstance(sent.parsed, models.SentMessages)
    [message] = sent.parsed.messages
    assert message.body == "Your results are ready."

    page = await list_conversations.asyncio(client=api, limit=10)
    assert isinstance(page, models.ConversationPage)
    assert [c.id for c in page.items] == [message.conversation_id]

    missing = await get_message.asyncio_detailed(client=api, message_id=uuid.uuid4())
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.GetMessageError)
    assert missing.parsed.error.code == models.GetMessageErrorDetailCode.MESSAGE_NOT_FOUND

    refused = await send_message.asyncio_detailed(
        client=api,
        body=models.SendMessage.from_dict({"to": [{"username": "nobody-here"}], "body": "x"}),
    )
    assert refused.status_code == 422
    assert isinstance(refused.parsed, models.SendMessageError)
    assert refused.parsed.error.code == models.SendMessageErrorDetailCode.INVALID_RECIPIENTS


def codes_raised_in_the_code() -> dict[str, set[str]]:
    """Every error code a literal in `app/` names (carriers' own excepted: they are
    CarrierError codes the worker records, never an HTTP answer)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "app").rglob("*.py"):
        if "carriers" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Call):
                names += [
                    kw.value.value
                    for kw in node.keywords
                    if kw.arg == "code" and isinstance(kw.value, ast.Constant)
                ]
                func = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if func == "error_response" and isinstance(node.args[1], ast.Constant):
                    names.append(node.args[1].value)
            if isinstance(node, ast.ClassDef):
                names += [
                    st.value.value
                    for st in node.body
                    if isinstance(st, ast.Assign)
                    and isinstance(st.value, ast.Constant)
                    and any(getattr(t, "id", "") == "code" for t in st.targets)
                ]
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


# Defaults of error classes always raised with a code of their own, and answers to no
# operation in particular (an unknown path or method; a bug).
NOT_PER_OPERATION = {
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "invalid",
    "service_unavailable",
    "internal_error",
}


async def test_every_error_code_is_documented_and_every_documented_one_is_raised(
    client: httpx.AsyncClient,
) -> None:
    from app.schemas.errors import CODES

    raised = codes_raised_in_the_code()
    assert set(raised) - NOT_PER_OPERATION - set(CODES) == set()
    spec = (await client.get("/openapi.json")).json()
    listed = {
        code
        for name, schema in spec["components"]["schemas"].items()
        if name.endswith("ErrorDetail")
        for code in schema["properties"]["code"]["enum"]
    }
    assert listed == set(CODES)
    assert set(CODES) - set(raised) == set()
