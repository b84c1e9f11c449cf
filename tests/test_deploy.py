"""What the repository ships for operators, checked with Prometheus' own `promtool`: the
alert rules load and fire on the trouble they are for (`deploy/prometheus/alerts.test.yml`),
the live `/metrics` passes promtool's lint, and every query of the Grafana dashboard and
the alerts is valid PromQL over metrics the service really exposes.

promtool comes with Debian's `prometheus` package (`.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SendTelnyx
from tests.support import Tenant, eventually, new_number

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "messaging.json"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (Debian)")
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_alert_rules_load_and_fire_on_their_trouble() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert alerts == {
        "MessagingOutboxBacklogAge",
        "MessagingWebhook5xx",
        "MessagingDeliveryFailures",
    }
    tested_alerts = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested_alerts == alerts


def dashboard_queries() -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in as Grafana would."""
    return expr.replace("$__rate_interval", "5m").replace("$job", ".*")


METRIC = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


async def live_metrics(client: httpx.AsyncClient, tenant: Tenant, send_telnyx: SendTelnyx) -> str:
    """The exposition after one of everything the dashboard shows has happened."""
    bob = await tenant.add_user("bob", extension="102", sms=True, outbound=True)
    assert bob.outbound_sms_number is not None
    assert (await send_telnyx(new_number(), bob.outbound_sms_number, "hi")).status_code == 200
    r = await tenant.call(
        "POST",
        "/v1/messages",
        as_=bob,
        expect=201,
        json={"to": [{"phone_number": new_number()}], "body": "See you at 3."},
    )
    message_id = r.json()["messages"][0]["id"]

    async def delivered() -> bool:
        got = await tenant.call("GET", f"/v1/messages/{message_id}", as_=bob, expect=200)
        return bool(got.json()["status"] == "delivered")

    await eventually(delivered)
    return (await client.get("/metrics")).text


async def test_live_metrics_pass_promtool_and_feed_every_query(
    client: httpx.AsyncClient, tenant: Tenant, send_telnyx: SendTelnyx, tmp_path: Path
) -> None:
    text = await live_metrics(client, tenant, send_telnyx)
    # On a thread: the session's app shares this event loop.
    linted = await asyncio.to_thread(promtool, "check", "metrics", stdin=text)
    assert linted.returncode == 0, linted.stdout + linted.stderr

    exposed = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    # Counters the dashboard shows that only trouble makes appear.
    exposed |= {"rate_limit_refusals_total", "event_streams_open"}
    queries = list(dashboard_queries())
    assert len(queries) >= 20
    alert_exprs = [
        ("alert " + r["alert"], r["expr"])
        for g in yaml.safe_load(ALERTS.read_text())["groups"]
        for r in g["rules"]
    ]
    unknown = {
        (title, name)
        for title, expr in [*queries, *alert_exprs]
        for name in METRIC.findall(expr)
        if name not in exposed
    }
    assert unknown == set()

    # Every dashboard query is PromQL promtool accepts (as a recording rule).
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = await asyncio.to_thread(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
