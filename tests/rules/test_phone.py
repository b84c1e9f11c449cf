"""Phone number parsing: what people type becomes one E.164 number, or a clear refusal."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from app.services.phone import (
    MAX_INPUT_LENGTH,
    InvalidPhoneNumber,
    fictional_number,
    is_textable_destination,
    normalize_e164,
)

REGIONS = ["US", "CA", "GB", "DE", "FR", "AU", "IN", "BR", "JP", "MX", "ES", "IT", "NL", "SE"]


@st.composite
def valid_numbers(draw: st.DrawFn) -> tuple[str, phonenumbers.PhoneNumber]:
    """A valid mobile or fixed-line number of some region: an example with new last digits."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE]))
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    digits = str(example.national_number)
    tail = draw(st.text("0123456789", min_size=4, max_size=4))
    number = phonenumbers.PhoneNumber(
        country_code=example.country_code,
        national_number=int(digits[:-4] + tail),
        italian_leading_zero=example.italian_leading_zero,
    )
    assume(phonenumbers.is_valid_number(number))
    return region, number


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(415) 555-2671", "+14155552671"),
        ("415.555.2671", "+14155552671"),
        ("415 555 2671", "+14155552671"),
        ("1-415-555-2671", "+14155552671"),
        ("  +1 415 555 2671  ", "+14155552671"),
        ("tel:+1-415-555-2671", "+14155552671"),
        ("+44 20 7946 0958", "+442079460958"),
        ("011 44 20 7946 0958", "+442079460958"),
        ("\uff14\uff11\uff15\uff15\uff15\uff15\uff12\uff16\uff17\uff11", "+14155552671"),
        ("+1 800 555 0100", "+18005550100"),
    ],
)
def test_common_formats_become_e164(raw: str, expected: str) -> None:
    assert normalize_e164(raw) == expected


def test_national_format_uses_default_region() -> None:
    assert normalize_e164("020 7946 0958", default_region="GB") == "+442079460958"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "letters"),
        ("call 415 555 2671", "letters"),
        ("1-800-FLOWERS", "letters"),
        ("415 555 2671 x12", "extension"),
        ("415 555 2671 ext. 12", "extension"),
        ("+1 415 555 2671;ext=2", "extension"),
        ("415 555 2671#12", "extension"),
        ("1" * (MAX_INPUT_LENGTH + 1), "too_long"),
        ("1234567890123456789", "unparsable"),
        ("+", "unparsable"),
        ("+1415555267", "not_possible"),
        ("+141555526711", "not_possible"),
        # Area code 555 does not exist: the tempting "+1 555 123 0000" is no number.
        ("+1 555 123 0000", "invalid"),
        # Ofcom's drama range: reserved for fiction and, unlike NANP 555-01XX, refused
        # by phonenumbers, so it cannot serve as demo data.
        ("+44 7700 900123", "invalid"),
    ],
)
def test_non_numbers_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as caught:
        normalize_e164(raw)
    assert caught.value.reason == reason
    message = str(caught.value)
    assert message[0].isupper() and message.endswith(".")


def test_invalid_phone_number_is_a_value_error() -> None:
    assert issubclass(InvalidPhoneNumber, ValueError)


@given(valid_numbers())
def test_every_format_of_one_number_agrees(case: tuple[str, phonenumbers.PhoneNumber]) -> None:
    region, number = case
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    rfc3966 = phonenumbers.format_number(number, PhoneNumberFormat.RFC3966)
    assert normalize_e164(e164) == e164
    assert normalize_e164(international) == e164
    assert normalize_e164(rfc3966) == e164
    assert normalize_e164(national, default_region=region) == e164
    # A region's national format read in another region is still that number when
    # written internationally, whatever the caller's default region.
    assert normalize_e164(international, default_region="JP") == e164


@given(st.text(alphabet=st.sampled_from("0123456789+-() .\u00a0/x;#tel:"), max_size=40))
def test_normalizing_is_idempotent_and_only_raises_invalid_phone_number(raw: str) -> None:
    try:
        e164 = normalize_e164(raw)
    except InvalidPhoneNumber:
        return
    assert e164.startswith("+") and e164[1:].isdigit()
    assert normalize_e164(e164) == e164
    assert normalize_e164(e164, default_region="GB") == e164


@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes(raw: str) -> None:
    try:
        e164 = normalize_e164(raw)
    except InvalidPhoneNumber:
        return
    assert normalize_e164(e164) == e164


@pytest.mark.parametrize("area_code", ["415", "212", "617", "312", "206", "201", "800"])
def test_fictional_numbers_are_valid_and_textable(area_code: str) -> None:
    # Pins the installed phonenumbers metadata: demo data and tests rely on it.
    for index in range(100):
        number = fictional_number(index, area_code)
        assert normalize_e164(number) == number
        assert is_textable_destination(number)


def test_fictional_number_shape() -> None:
    assert fictional_number(0) == "+14155550100"
    assert fictional_number(99, "212") == "+12125550199"
    with pytest.raises(ValueError):
        fictional_number(100)
    with pytest.raises(ValueError):
        fictional_number(1, "41")


@pytest.mark.parametrize(
    ("e164", "textable"),
    [
        ("+14155550100", True),  # NANP geographic: FIXED_LINE_OR_MOBILE
        ("+447400123456", True),  # UK mobile
        ("+442079460958", True),  # UK landline: may be text-enabled, the carrier knows
        ("+18005550100", True),  # US toll-free: toll-free messaging exists
        ("+19005551234", False),  # US premium rate
        ("+449098790000", False),  # UK premium rate
        ("+15005550006", False),  # +1 500 personal number
        ("+15551230000", False),  # not a valid number
        ("not a number", False),
        ("", False),
    ],
)
def test_textable_destinations(e164: str, textable: bool) -> None:
    assert is_textable_destination(e164) is textable


@given(st.from_regex(r"\+1[2-9][0-9]{9}", fullmatch=True))
def test_inbound_nanp_numbers_skip_parsing_with_the_same_result(raw: str) -> None:
    """The inbound path keeps "+1NXXXXXXXXX" as it is without parsing: exactly what
    parsing would give, valid or not."""
    from app.services.inbound import _clean_number

    try:
        slow = normalize_e164(raw)
    except InvalidPhoneNumber:
        slow = raw.strip()[:16]
    assert _clean_number(raw) == slow == raw
