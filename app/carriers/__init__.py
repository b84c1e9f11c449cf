"""The carriers: one interface (`base`), one module per carrier.

`WEBHOOK_SIGNATURE_HEADERS` names the headers each carrier signs its webhooks with,
so that the API docs can describe them without knowing any carrier's wire format.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.carriers import telnyx, twilio
from app.carriers.base import SignatureHeader

WEBHOOK_SIGNATURE_HEADERS: Mapping[str, tuple[SignatureHeader, ...]] = {
    telnyx.CARRIER_NAME: telnyx.SIGNATURE_HEADERS,
    twilio.CARRIER_NAME: twilio.SIGNATURE_HEADERS,
}
