"""Metrics as a Prometheus server sees them from `uvicorn --workers 2`: every scrape,
whichever worker answers it, counts the requests of all workers, so no counter ever goes
backwards (Prometheus would read each step back as a restart) and the totals are exact.
The answers parse with Prometheus' own parsers, in both exposition formats."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import app_process
from tests.support import Tenant, eventually
from tests.system.conftest import sse

pytestmark = pytest.mark.slow

Sample = tuple[str, tuple[tuple[str, str], ...]]


def counters(text: str) -> dict[Sample, float]:
    """Every counter and histogram count of a text exposition, by name and labels."""
    found: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count", "_bucket")):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(url: str, accept: str | None = None) -> httpx.Response:
    # A new connection each time, as another scraper would: any worker may answer.
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        headers = {"Accept": accept} if accept else {}
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200
    return response


async def test_every_scrape_counts_every_worker_and_never_goes_backwards(
    system_env: dict[str, str],
) -> None:
    env = {k: v for k, v in system_env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    healthz = ("http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
    with app_process(env, uvicorn_args=("--workers", "2")) as app:
        before = counters((await scrape(app.url)).text).get(healthz, 0.0)
        previous: dict[Sample, float] = {}
        sent = 0
        for _ in range(20):
            # Each on a connection of its own, so both workers serve some.
            async def one() -> None:
                async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
                    assert (await http.get("/healthz")).status_code == 200

            await asyncio.gather(*(one() for _ in range(4)))
            sent += 4
            now = counters((await scrape(app.url)).text)
            went_back = {k: (v, now.get(k, 0.0)) for k, v in previous.items() if now.get(k, 0) < v}
            assert went_back == {}
            assert now[healthz] - before == sent
            previous = now

        om = await scrape(app.url, "application/openmetrics-text; version=1.0.0")
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        families = {f.name: f for f in openmetrics_families(om.text)}
        [sample] = [
            s
            for s in families["http_requests"].samples
            if s.labels == {"method": "GET", "route": "/healthz", "status": "200"}
            and s.name == "http_requests_total"
        ]
        assert sample.value >= before + sent

        # A gauge of live things is the sum over the live workers, whichever answers.
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            tenant = await Tenant.create(http)
        async with sse(app.url, tenant.admin.token) as stream:
            await stream.connected.wait()
            await eventually(lambda: open_streams(app.url), timeout=30)
            assert [await open_streams(app.url) for _ in range(10)] == [1.0] * 10
        await eventually(lambda: no_open_streams(app.url), timeout=30)
        assert [await open_streams(app.url) for _ in range(10)] == [0.0] * 10


async def open_streams(url: str) -> float:
    for family in text_string_to_metric_families((await scrape(url)).text):
        if family.name == "event_streams_open":
            return float(family.samples[0].value)
    raise AssertionError("event_streams_open is missing")


async def no_open_streams(url: str) -> bool:
    return await open_streams(url) == 0.0
