"""SMS segment counting the way carriers bill it (3GPP TS 23.038 / 23.040).

A body that uses only the GSM 03.38 alphabet goes as GSM-7: 160 septets in one SMS,
or 153 per part once it needs several (the other 7 septets carry the concatenation
header). Characters of the extension table are sent as ESC + char, two septets, and
the pair is never split across parts. Any other character makes the whole body UCS-2:
70 UTF-16 code units in one SMS, 67 per part, and a surrogate pair (an emoji, say)
is never split either.

An empty body counts as one GSM-7 segment of 0 units: carriers bill an empty SMS as
one message, so this is what a send would cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_SINGLE_UNITS = 160
GSM7_PART_UNITS = 153
UCS2_SINGLE_UNITS = 70
UCS2_PART_UNITS = 67

# The GSM 03.38 default alphabet, in table order 0x00-0x7F. 0x1B (ESC) is left out:
# it is the escape into the extension table, not a character a body can contain.
_GSM7_BASIC = frozenset(
    "@\u00a3$\u00a5\u00e8\u00e9\u00f9\u00ec\u00f2\u00c7\n\u00d8\u00f8\r\u00c5\u00e5"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e\u00c6\u00e6\u00df\u00c9"
    " !\"#\u00a4%&'()*+,-./"
    "0123456789:;<=>?"
    "\u00a1ABCDEFGHIJKLMNOPQRSTUVWXYZ\u00c4\u00d6\u00d1\u00dc\u00a7"
    "\u00bfabcdefghijklmnopqrstuvwxyz\u00e4\u00f6\u00f1\u00fc\u00e0"
)
# The extension table: each costs ESC + itself, two septets.
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|\u20ac")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """How a body goes over the air: its encoding, SMS count, and size in septets/code units."""

    encoding: Encoding
    segments: int
    units: int


def is_gsm7(body: str) -> bool:
    """True when every character of `body` is in the GSM 03.38 alphabet or its extension."""
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXTENSION for ch in body)


def _gsm7_cost(ch: str) -> int:
    return 2 if ch in _GSM7_EXTENSION else 1


def _ucs2_cost(ch: str) -> int:
    # Outside the Basic Multilingual Plane a character is a surrogate pair on the wire.
    # A lone surrogate (possible in a Python str) is one code unit.
    return 2 if ord(ch) > 0xFFFF else 1


def _plan(body: str) -> tuple[Encoding, int, list[int]]:
    """Encoding, total units, and the start index of every part after the first."""
    if is_gsm7(body):
        encoding: Encoding = "GSM-7"
        costs = [_gsm7_cost(ch) for ch in body]
        single, per_part = GSM7_SINGLE_UNITS, GSM7_PART_UNITS
    else:
        encoding = "UCS-2"
        costs = [_ucs2_cost(ch) for ch in body]
        single, per_part = UCS2_SINGLE_UNITS, UCS2_PART_UNITS
    total = sum(costs)
    if total <= single:
        return encoding, total, []
    # Greedy packing by whole characters: a two-unit character (escape pair or
    # surrogate pair) that does not fit in what is left of a part starts the next one,
    # which is exactly how handsets and carriers split.
    starts: list[int] = []
    used = 0
    for index, cost in enumerate(costs):
        if used + cost > per_part:
            starts.append(index)
            used = 0
        used += cost
    return encoding, total, starts


def count_segments(body: str) -> SegmentInfo:
    """Count the SMS segments a carrier bills for `body`, with its encoding and units."""
    encoding, units, starts = _plan(body)
    return SegmentInfo(encoding=encoding, segments=len(starts) + 1, units=units)


def split_segments(body: str) -> list[str]:
    """The parts a carrier would send `body` as; they join back into `body`.

    An empty body is one empty part, matching `count_segments`.
    """
    _, _, starts = _plan(body)
    bounds = [0, *starts, len(body)]
    return [body[a:b] for a, b in pairwise(bounds)]
