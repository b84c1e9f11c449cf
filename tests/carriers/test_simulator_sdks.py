"""The simulator driven by the carriers' own Python SDKs (`twilio`, `telnyx`), pointed at
its base URL: it must answer what they expect of Twilio's and Telnyx's APIs, errors
included (JSON in each carrier's shape, which the SDKs turn into their own exceptions)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest
import telnyx
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client as TwilioClient

from .conftest import TELNYX_API_KEY, TWILIO_SID, TWILIO_TOKEN, Receiver

FROM = "+15551230000"
TO = "+15557654321"
SERVICE_SID = "MG" + "2" * 32
PROFILE_ID = "40017f8e-49bd-4f1a-9e0c-6a3d3d7c6f1e"

T = TypeVar("T")


def until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 30) -> T:
    """Fetch again until `done`; a generous deadline, no assumption about speed."""
    deadline = time.monotonic() + timeout
    while True:
        found = fetch()
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def twilio_sdk(sim: str, token: str = TWILIO_TOKEN) -> TwilioClient:
    client = TwilioClient(TWILIO_SID, token)
    # The REST API's domain (api.twilio.com) is where every Messages call goes.
    client.api.base_url = sim
    return client


@pytest.fixture
def telnyx_sdk(sim: str) -> Iterator[telnyx.Telnyx]:
    # The SDK's base URL includes the API version; no retries, so errors show at once.
    client = telnyx.Telnyx(api_key=TELNYX_API_KEY, base_url=f"{sim}/v2", max_retries=0)
    yield client
    client.close()


# --- Twilio -------------------------------------------------------------------------


def test_twilio_sdk_sends_fetches_and_lists(sim: str, receiver_server: Receiver) -> None:
    client = twilio_sdk(sim)
    sent = client.messages.create(
        to=TO,
        from_=FROM,
        body="Your results are ready.",
        status_callback=f"{receiver_server.url}/webhooks/twilio/status?ref=m1",
    )
    assert sent.sid is not None and sent.sid.startswith("SM") and len(sent.sid) == 34
    assert (sent.to, sent.from_, sent.body) == (TO, FROM, "Your results are ready.")
    assert sent.status == "queued" and sent.num_segments == "1"
    assert sent.account_sid == TWILIO_SID and sent.date_created is not None

    fetched = client.messages(sent.sid).fetch()
    assert (fetched.sid, fetched.to, fetched.body) == (sent.sid, TO, "Your results are ready.")
    assert fetched.status in ("queued", "sent", "delivered")

    other = client.messages.create(to="+15557650000", from_=FROM, body="Second")
    listed = client.messages.list(limit=20)
    assert {m.sid for m in listed} == {sent.sid, other.sid}
    # Newest first, as Twilio lists them; filtered by recipient.
    assert [m.sid for m in listed] == [other.sid, sent.sid]
    assert [m.sid for m in client.messages.list(to=TO)] == [sent.sid]
    paged = list(client.messages.stream(page_size=1))
    assert [m.sid for m in paged] == [other.sid, sent.sid]


def test_twilio_sdk_sends_with_only_a_messaging_service(sim: str) -> None:
    client = twilio_sdk(sim)
    sent = client.messages.create(to=TO, messaging_service_sid=SERVICE_SID, body="From the pool")
    assert sent.messaging_service_sid == SERVICE_SID
    # Twilio answers "accepted" and picks the sender from the service's pool later.
    assert sent.status == "accepted" and sent.from_ is None
    fetched = until(lambda: client.messages(sent.sid or "").fetch(), lambda m: m.from_ is not None)
    assert fetched.from_ is not None and fetched.from_.startswith("+")
    assert fetched.status in ("sent", "delivered")
    [accepted] = httpx.get(f"{sim}/_sim/messages").json()["items"]
    assert accepted["from"] == fetched.from_


def test_twilio_sdk_errors_are_twilio_errors(sim: str) -> None:
    client = twilio_sdk(sim)
    with pytest.raises(TwilioRestException) as missing:
        client.messages("SM" + "0" * 32).fetch()
    assert (missing.value.status, missing.value.code) == (404, 20404)

    with pytest.raises(TwilioRestException) as no_sender:
        client.messages.create(to=TO, body="Nobody sends this")
    assert (no_sender.value.status, no_sender.value.code) == (400, 21603)

    with pytest.raises(TwilioRestException) as refused:
        twilio_sdk(sim, token="wrong").messages.create(to=TO, from_=FROM, body="x")
    assert (refused.value.status, refused.value.code) == (401, 20003)


def test_twilio_paths_it_does_not_serve_answer_json(sim: str) -> None:
    client = twilio_sdk(sim)
    unknown = client.request("GET", f"{sim}/2010-04-01/Accounts/{TWILIO_SID}/Calls.json")
    assert unknown.status_code == 404
    assert httpx.Response(404, text=unknown.text).json()["code"] == 20404
    wrong_method = httpx.put(
        f"{sim}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json", auth=(TWILIO_SID, TWILIO_TOKEN)
    )
    assert wrong_method.status_code == 405
    assert wrong_method.json()["status"] == 405


# --- Telnyx -------------------------------------------------------------------------


def test_telnyx_sdk_sends_and_retrieves(
    sim: str, telnyx_sdk: telnyx.Telnyx, receiver_server: Receiver
) -> None:
    sent = telnyx_sdk.messages.send(
        from_=FROM,
        to=TO,
        text="Your results are ready.",
        webhook_url=f"{receiver_server.url}/webhooks/telnyx?ref=m1",
    )
    assert sent.data is not None and sent.data.id
    assert sent.data.type == "SMS" and sent.data.direction == "outbound"
    assert sent.data.from_ is not None and sent.data.from_.phone_number == FROM
    assert sent.data.to is not None and sent.data.to[0].phone_number == TO
    assert sent.data.to[0].status == "queued" and sent.data.parts == 1

    got = telnyx_sdk.messages.retrieve(sent.data.id)
    assert got.data is not None
    assert (got.data.id, got.data.text) == (sent.data.id, "Your results are ready.")
    assert got.data.direction == "outbound"


def test_telnyx_sdk_sends_with_only_a_messaging_profile(
    sim: str, telnyx_sdk: telnyx.Telnyx
) -> None:
    sent = telnyx_sdk.messages.send(to=TO, messaging_profile_id=PROFILE_ID, text="From the pool")
    assert sent.data is not None and sent.data.messaging_profile_id == PROFILE_ID
    assert sent.data.from_ is not None and sent.data.from_.phone_number
    [accepted] = httpx.get(f"{sim}/_sim/messages").json()["items"]
    assert accepted["from"] == sent.data.from_.phone_number

    pooled = telnyx_sdk.messages.send_number_pool(
        to=TO, messaging_profile_id=PROFILE_ID, text="Pool endpoint"
    )
    assert pooled.data is not None and pooled.data.messaging_profile_id == PROFILE_ID


def test_telnyx_sdk_mms_is_answered_as_mms(sim: str, telnyx_sdk: telnyx.Telnyx) -> None:
    sent = telnyx_sdk.messages.send(
        from_=FROM, to=TO, text="The form", media_urls=["https://example.com/form.jpg"]
    )
    assert sent.data is not None and sent.data.type == "MMS"
    assert sent.data.media is not None and [m.url for m in sent.data.media] == [
        "https://example.com/form.jpg"
    ]
    got = telnyx_sdk.messages.retrieve(sent.data.id or "")
    assert got.data is not None and got.data.type == "MMS"


def test_telnyx_sdk_errors_are_telnyx_errors(sim: str, telnyx_sdk: telnyx.Telnyx) -> None:
    with pytest.raises(telnyx.NotFoundError) as missing:
        telnyx_sdk.messages.retrieve(str(uuid.uuid4()))
    assert missing.value.status_code == 404
    assert missing.value.response.json()["errors"][0]["code"] == "10005"

    with pytest.raises(telnyx.UnprocessableEntityError) as no_sender:
        telnyx_sdk.messages.send(to=TO, text="Nobody sends this")
    assert no_sender.value.response.json()["errors"][0]["source"]["pointer"] == "/from"

    refused = telnyx.Telnyx(api_key="wrong", base_url=f"{sim}/v2", max_retries=0)
    with pytest.raises(telnyx.AuthenticationError):
        refused.messages.retrieve(str(uuid.uuid4()))
    refused.close()

    unknown = httpx.get(f"{sim}/v2/calls", headers={"Authorization": f"Bearer {TELNYX_API_KEY}"})
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["code"] == "10005"
