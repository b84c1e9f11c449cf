"""The simulator carrier's doors: a newcomer makes a patient's text arrive and sees what
the simulator "sent", without a carrier; mounted only with CARRIER=simulator."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support import Tenant, eventually, new_number


async def test_a_text_arrives_through_the_simulator_and_its_auto_reply_is_seen_sent(
    client: httpx.AsyncClient,
) -> None:
    tenant = await Tenant.create(client)
    bob, line = await tenant.add_auto_replying_user("bob", "102", "We got your text.")
    patient = new_number()
    national = f"({patient[2:5]}) {patient[5:8]}-{patient[8:]}"
    r = await tenant.call(
        "POST",
        "/v1/simulator/inbound",
        as_=bob,
        expect=201,
        json={"from_number": national, "to_number": line, "text": "Is the clinic open?"},
    )
    assert r.json()["outcome"] == "stored"
    assert r.json()["auto_reply_decision"] == {"sent": True, "reason": "sent"}
    conv = await tenant.sms_conversation(bob, patient)
    assert conv is not None and conv["last_message"]["body"] in (
        "Is the clinic open?",
        "We got your text.",
    )

    async def sent() -> list[dict[str, Any]]:
        page = await tenant.call("GET", "/v1/simulator/sent", as_=bob, expect=200)
        return [s for s in page.json()["items"] if s["to_number"] == patient]

    (reply,) = await eventually(sent)
    assert (reply["from_number"], reply["body"]) == (line, "We got your text.")
    assert reply["sent_at"].endswith("Z") and reply["message_id"]

    # Another organization can neither text this number through it nor see its sends.
    other = await Tenant.create(client)
    r = await other.call(
        "POST",
        "/v1/simulator/inbound",
        json={"from_number": new_number(), "to_number": line, "text": "hi"},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "phone_number_not_found"
    page = await other.call("GET", "/v1/simulator/sent", expect=200)
    assert page.json() == {"items": [], "next_cursor": None}
    r = await tenant.call(
        "POST",
        "/v1/simulator/inbound",
        json={"from_number": "not a number", "to_number": line, "text": "hi"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_phone_number"


async def test_the_simulator_doors_exist_only_with_the_simulator_carrier(make_app: Any) -> None:
    async with make_app(carrier="telnyx", telnyx_api_key="KEY") as (_, client):
        tenant = await Tenant.create(client)
        line = await tenant.add_number(None)
        r = await tenant.call(
            "POST",
            "/v1/simulator/inbound",
            json={"from_number": new_number(), "to_number": line, "text": "hi"},
        )
        assert r.status_code == 404
        assert (await tenant.call("GET", "/v1/simulator/sent")).status_code == 404
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not [p for p in paths if p.startswith("/v1/simulator")]
    async with make_app() as (_, client):
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v1/simulator/inbound", "/v1/simulator/sent"} <= set(paths)
