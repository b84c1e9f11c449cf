"""Schemathesis against the service's own OpenAPI document, served over real HTTP.

The app runs under uvicorn on its own thread and event loop (schemathesis calls it
synchronously), on a PostgreSQL database of its own, migrated by Alembic like the main
one: fuzzing creates users, groups and globally unique phone numbers, and none of that
may leak into the other tests. It is authenticated as the admin of a fresh organization.

For every operation but the event stream, and every generated request, valid or not:
- never a 5xx;
- every 4xx has the contract's error body;
- status codes, content types, headers and bodies conform to the document;
- the carrier webhooks (the document's `webhooks`), never signed here, answer 401.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from app.main import create_app
from app.migrate import upgrade_to_head
from app.settings import Settings
from devtools.simulator_server import RunningServer, serve_in_thread
from tests.conftest import PG_BASE, RUN_ID, _admin_execute
from tests.support import OPERATOR_TOKEN, auth

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

# What schemathesis can check of a response against the document. Left out on purpose:
# - `positive_data_acceptance`: a request the schema allows may still break a rule no
#   schema expresses (an unknown extension, an invalid phone number, a taken username);
# - `negative_data_rejection`: every request here carries the admin's token, even those
#   generated without one, and HTTP ignores unknown query parameters, so "invalid" cases
#   are often valid requests; lax JSON scalars (`0` for `false`) are FastAPI's default.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@dataclass(frozen=True)
class FuzzTarget:
    base_url: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
async def fuzz_database_url() -> AsyncIterator[str]:
    """A database of the fuzz run's own, built by `alembic upgrade head`."""
    name = f"msg_fuzz_{RUN_ID}"
    await _admin_execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_BASE}/{name}"
    try:
        await upgrade_to_head(url)
        yield url
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fuzz_server(
    base_settings: Settings, redis_prefix: str, fuzz_database_url: str
) -> Iterator[RunningServer]:
    settings_ = base_settings.model_copy(
        update={"database_url": fuzz_database_url, "redis_key_prefix": f"{redis_prefix}fuzz:"}
    )
    running = serve_in_thread(create_app(settings_), startup_timeout=120)
    try:
        yield running
    finally:
        running.stop(timeout=60)


@pytest.fixture(scope="module")
def fuzz_target(fuzz_server: RunningServer) -> FuzzTarget:
    """The server's URL and the bearer token of a fresh organization's admin."""
    r = httpx.post(
        f"{fuzz_server.url}/v1/organizations",
        headers=auth(OPERATOR_TOKEN),
        json={"name": "Fuzz Clinic", "admin_username": "fuzzadmin"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return FuzzTarget(fuzz_server.url, auth(r.json()["admin_token"]))


def _document() -> dict[str, Any]:
    """The document the app serves at /openapi.json (a test below checks it is the same).

    It is read at import time because schemathesis builds one test per operation while
    pytest collects; its fixture-based loader (`schemathesis.pytest.from_fixture`) does
    not work with the installed pytest (it sets `Function._nodeid`, gone in pytest 9).
    """
    # Building the app configures the "app" logger; collection must leave logging alone.
    logger = logging.getLogger("app")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        app = create_app(Settings(database_url=PG_BASE + "/unused"))
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    document: dict[str, Any] = app.openapi()
    return document


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/v1/events")
# The carriers' webhooks are described as webhooks (no client calls them); fuzzed as the
# carriers' own paths.
carrier_schema = schemathesis.openapi.from_dict(
    {**DOCUMENT, "paths": DOCUMENT["webhooks"], "webhooks": {}}
)


def assert_error_shape(response: Any) -> None:
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and SNAKE_CASE.match(error["code"]), body
    assert isinstance(error["message"], str) and error["message"].strip(), body


async def test_the_fuzzed_document_is_the_served_one(fuzz_target: FuzzTarget) -> None:
    async with httpx.AsyncClient(base_url=fuzz_target.base_url, timeout=60) as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json() == DOCUMENT
    assert "/v1/events" in DOCUMENT["paths"]  # excluded from fuzzing: a stream never ends


# Text PostgreSQL cannot store in a text column (NUL) must be refused, not crash: the
# fuzzer finds this now and then; these make it certain.
NUL = "Front\u0000Desk"


async def test_text_postgresql_cannot_store_is_refused_not_a_5xx(fuzz_target: FuzzTarget) -> None:
    async with httpx.AsyncClient(
        base_url=fuzz_target.base_url, headers=fuzz_target.headers, timeout=60
    ) as client:
        me = (await client.get("/v1/me")).json()
        r = await client.post("/v1/groups", json={"name": "Desk 4000", "extension": "4000"})
        assert r.status_code == 201, r.text
        group_id = r.json()["id"]
        probes: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            ("POST", "/v1/users", {"username": "nul1", "display_name": NUL}, {}),
            ("PATCH", f"/v1/users/{me['id']}", {"display_name": NUL}, {}),
            ("POST", f"/v1/users/{me['id']}/tokens", {"name": NUL}, {}),
            ("POST", "/v1/groups", {"name": NUL, "extension": "4001"}, {}),
            ("PATCH", f"/v1/groups/{group_id}", {"name": NUL}, {}),
            (
                "POST",
                "/v1/organizations",
                {"name": NUL, "admin_username": "nul2"},
                auth(OPERATOR_TOKEN),
            ),
            ("PUT", "/v1/me/auto-responder", {"enabled": True, "text": NUL}, {}),
        ]
        answers = {}
        for method, path, body, headers in probes:
            r = await client.request(method, path, json=body, headers=headers)
            answers[(method, path)] = r.status_code
            if 400 <= r.status_code < 500:
                assert_error_shape(r)
        assert {probe: status for probe, status in answers.items() if status >= 500} == {}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document_and_never_fails(case: Any, fuzz_target: FuzzTarget) -> None:
    response = case.call(base_url=fuzz_target.base_url, headers=fuzz_target.headers, timeout=60)
    case.validate_response(response, checks=CHECKS, headers=fuzz_target.headers)
    status = response.status_code
    assert status < 500, (status, response.text)
    if 400 <= status < 500:
        assert_error_shape(response)


@carrier_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_carrier_webhooks_refuse_what_no_carrier_signed(case: Any, fuzz_target: FuzzTarget) -> None:
    response = case.call(base_url=fuzz_target.base_url, timeout=60)
    case.validate_response(response, checks=CHECKS)
    # Never signed here: refused before anything is parsed or stored (other methods: 405).
    expected = 401 if case.method.upper() == "POST" else 405
    assert response.status_code == expected, (response.status_code, response.text)
    assert_error_shape(response)
