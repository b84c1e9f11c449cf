"""What `/metrics` tells an operator, read with Prometheus' own parsers: webhooks by
carrier and outcome, inbound texts, auto-reply decisions, deliveries and receipts, the
carrier's latency, the outbox's backlog, rate-limit refusals; in Prometheus' text
format, or in OpenMetrics when the scraper asks for it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SendTelnyx
from tests.support import Tenant, auth, eventually, new_number

# What Prometheus (2.x and 3.x) sends.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[Any]], float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_inbound_webhooks_and_decisions_are_counted(
    client: httpx.AsyncClient, tenant: Tenant, send_telnyx: SendTelnyx
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number is not None
    await tenant.call(
        "PUT",
        "/v1/me/auto-responder",
        as_=bob,
        expect=200,
        json={"enabled": True, "text": "Back soon."},
    )
    before = await scrape(client)
    assert (await send_telnyx(new_number(), bob.outbound_sms_number, "hi")).status_code == 200
    assert (await send_telnyx(new_number(), new_number(), "lost")).status_code == 200
    bad = await client.post(
        "/webhooks/telnyx",
        content=b"{}",
        headers={"telnyx-signature-ed25519": "AAAA", "telnyx-timestamp": "1"},
    )
    assert bad.status_code == 401
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("webhooks_received_total", carrier="telnyx", outcome="stored") == 1
    assert grew("webhooks_received_total", carrier="telnyx", outcome="unrouted") == 1
    assert grew("webhooks_received_total", carrier="telnyx", outcome="invalid_signature") == 1
    assert grew("inbound_messages_total", carrier="telnyx", outcome="stored", reason="none") == 1
    assert (
        grew(
            "inbound_messages_total",
            carrier="telnyx",
            outcome="unrouted",
            reason="number_not_owned",
        )
        == 1
    )
    assert grew("auto_reply_decisions_total", reason="sent") == 1
    assert grew("http_requests_total", method="POST", route="/webhooks/telnyx", status="200") == 2


async def test_deliveries_their_latency_receipts_and_the_outbox_are_measured(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    before = await scrape(client)
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=bob,
        expect=201,
        json={"to": [{"phone_number": new_number()}], "body": "Your results are ready."},
    )
    [message] = r.json()["messages"]

    async def delivered() -> bool:
        got = await tenant.call("GET", f"/v1/messages/{message['id']}", as_=bob, expect=200)
        return bool(got.json()["status"] == "delivered")

    await eventually(delivered)
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("outbound_delivery_attempts_total", outcome="accepted") >= 1
    assert grew("carrier_send_duration_seconds_count", carrier="simulator", outcome="accepted") >= 1
    assert grew("delivery_receipts_total", carrier="simulator", status="delivered") >= 1
    for gauge in (
        "outbox_backlog_jobs",
        "outbox_oldest_due_job_age_seconds",
        "outbox_pending_jobs",
        "outbox_in_flight_jobs",
    ):
        assert (gauge, frozenset()) in after, gauge
        assert after[(gauge, frozenset())] >= 0


async def test_rate_limit_refusals_are_counted_by_limit(
    client: httpx.AsyncClient, make_app: Any, redis_prefix: str
) -> None:
    own = f"{redis_prefix}metrics-{uuid.uuid4().hex[:8]}:"
    async with make_app(api_rate_limit_per_minute=1, redis_key_prefix=own) as (_, limited):
        tenant = await Tenant.create(client)
        before = await scrape(limited)
        statuses = [
            (await limited.get("/v1/me", headers=auth(tenant.admin.token))).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 429, 429]
        after = await scrape(limited)
    token = "rate_limit_refusals_total"
    assert value(after, token, limit="token") - value(before, token, limit="token") == 2


async def test_openmetrics_is_answered_when_asked_for(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    r = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(r.text)}
    assert families["http_requests"].type == "counter"
    assert families["http_request_duration_seconds"].type == "histogram"
    assert families["outbox_backlog_jobs"].type == "gauge"
    plain = await client.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "# EOF" not in plain.text
