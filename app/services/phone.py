"""Phone number rules: parse what people type into E.164, and say what can take a text.

Test and demo data should use `fictional_number`: NANPA reserves 555-0100 to 555-0199
in every area code for fiction, so those numbers never reach a real person, and the
bundled `phonenumbers` metadata accepts them as valid (a test pins that). Beware of
other "555" shapes: `+1 555 ...` (area code 555) is not a valid number and is refused.
"""

from __future__ import annotations

import functools
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType
from phonenumbers.timezone import UNKNOWN_TIMEZONE, time_zones_for_number

from app.errors import Invalid

# E.164 allows 15 digits; even generously formatted ("+1 (415) 555-2671") a real
# number stays far below this. The cap keeps pasted paragraphs out of the parser.
MAX_INPUT_LENGTH = 64

# Characters that start an extension or a dial string ("415 555 2671;ext=2",
# "...#123", "...,,4"). A text cannot reach an extension, and dropping it silently
# would address someone else (the main line), so such input is refused.
_DIAL_STRING_MARKERS = frozenset(";#*,")
# "415 555 2671 x12", "... ext. 12", "... extension 12": named so the error can say why.
_EXTENSION_SUFFIX = re.compile(r"(?:ext(?:ension)?\.?|x)\s*\d+$", re.IGNORECASE)

# Number types a US carrier delivers SMS to. NANP numbers are mostly
# FIXED_LINE_OR_MOBILE, since the plan cannot tell the two apart; landlines are kept
# because many are text-enabled (hosted SMS) and the carrier, not us, knows which.
# VOIP is kept: interconnected VoIP numbers (Google Voice, CPaaS long codes like our
# own) are ordinary SMS destinations on US networks. TOLL_FREE is kept: toll-free
# messaging is a standard US product, and clinics often text from toll-free numbers.
# Left out: PREMIUM_RATE and SHARED_COST (the recipient's billing makes carriers block
# them), PAGER, VOICEMAIL, UAN, PERSONAL_NUMBER (+1 500 follow-me numbers), UNKNOWN.
_TEXTABLE_TYPES = frozenset(
    {
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
        PhoneNumberType.VOIP,
        PhoneNumberType.TOLL_FREE,
    }
)


class InvalidPhoneNumber(ValueError):
    """Input that is not a valid, complete phone number; `str()` is a human sentence.

    `reason` is a stable snake_case word for API error details: `empty`, `too_long`,
    `letters`, `extension`, `unparsable`, `not_possible`, `invalid`.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _strip_tel_scheme(text: str) -> str:
    # RFC 3966 "tel:+1-415-555-2671" is what phonenumbers' own RFC3966 format and
    # click-to-call links produce; it is the only place letters are allowed.
    if text[:4].lower() == "tel:":
        return text[4:]
    return text


@functools.lru_cache(maxsize=65_536)
def normalize_e164(raw: str, default_region: str = "US") -> str:
    """Parse a phone number in any common format and return it as E.164 ("+14155552671").

    Numbers without a country code are read as `default_region` numbers. Raises
    InvalidPhoneNumber for anything that is not one possible and valid number.
    Pure, so the answers for the numbers seen most (every webhook names two) are kept.
    """
    text = raw.strip()
    if not text:
        raise InvalidPhoneNumber("The phone number is empty.", "empty")
    if len(text) > MAX_INPUT_LENGTH:
        raise InvalidPhoneNumber(
            f"The phone number is longer than {MAX_INPUT_LENGTH} characters.", "too_long"
        )
    body = _strip_tel_scheme(text)
    if any(ch in _DIAL_STRING_MARKERS for ch in body):
        raise InvalidPhoneNumber(
            "Phone numbers with an extension cannot receive text messages.", "extension"
        )
    # phonenumbers turns letters into keypad digits ("1-800-FLOWERS") and skips leading
    # words ("call 415..."); in an address field letters are far more often a typo or
    # pasted prose than a vanity number, so they are refused rather than guessed at.
    if any(ch.isalpha() for ch in body):
        if _EXTENSION_SUFFIX.search(body):
            raise InvalidPhoneNumber(
                "Phone numbers with an extension cannot receive text messages.", "extension"
            )
        raise InvalidPhoneNumber("A phone number cannot contain letters.", "letters")
    try:
        number = phonenumbers.parse(body, default_region)
    except NumberParseException as exc:
        raise InvalidPhoneNumber(
            "This is not a phone number; use a format like +14155550123.", "unparsable"
        ) from exc
    if number.extension:
        raise InvalidPhoneNumber(
            "Phone numbers with an extension cannot receive text messages.", "extension"
        )
    if not phonenumbers.is_possible_number(number):
        raise InvalidPhoneNumber(
            "This phone number has the wrong number of digits for its country.",
            "not_possible",
        )
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber(
            "This phone number is not in use in its country (check the area code).",
            "invalid",
        )
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


@functools.lru_cache(maxsize=65_536)
def is_textable_destination(e164: str) -> bool:
    """True when a US carrier would deliver an SMS to this E.164 number's type.

    Anything that does not parse as a valid number is not textable.
    """
    try:
        number = phonenumbers.parse(e164, None)
    except NumberParseException:
        return False
    if not phonenumbers.is_valid_number(number):
        return False
    return phonenumbers.number_type(number) in _TEXTABLE_TYPES


@functools.lru_cache(maxsize=65_536)
def time_zone_of(e164: str) -> str | None:
    """The one IANA time zone where this number lives, by phonenumbers' geographic data;
    None where the number spans several zones (an area code across a zone line, a
    toll-free or mobile range of a whole country) or none is known."""
    try:
        number = phonenumbers.parse(e164, None)
    except NumberParseException:
        return None
    zones = time_zones_for_number(number)
    if len(zones) != 1 or zones[0] == UNKNOWN_TIMEZONE:
        return None
    try:
        ZoneInfo(zones[0])
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return str(zones[0])


def fictional_number(index: int, area_code: str = "415") -> str:
    """The E.164 number `+1 <area_code> 555 01<index>`, reserved for fiction (index 0-99).

    For tests and demo data: valid to phonenumbers, yet never a real subscriber.
    """
    if not 0 <= index <= 99:
        raise ValueError("index must be between 0 and 99 (555-0100 to 555-0199).")
    if len(area_code) != 3 or not area_code.isdigit():
        raise ValueError("area_code must be three digits.")
    return f"+1{area_code}55501{index:02d}"


def parse_number(raw: str, field: str) -> str:
    """A phone number in E.164, or a 422 that names the field."""
    try:
        return normalize_e164(raw)
    except InvalidPhoneNumber as exc:
        raise Invalid(
            f"'{raw}' is not a valid phone number: {exc}",
            code="invalid_phone_number",
            details=[{"field": field, "value": raw}],
        ) from None
