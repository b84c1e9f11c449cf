"""Segment counting as carriers bill it: GSM-7 septets or UCS-2 code units."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from app.services.segments import (
    GSM7_PART_UNITS,
    GSM7_SINGLE_UNITS,
    UCS2_PART_UNITS,
    UCS2_SINGLE_UNITS,
    SegmentInfo,
    count_segments,
    is_gsm7,
    split_segments,
)

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "\f^{}\\[~]|€"
# Look-alikes that are not in the GSM alphabet and force UCS-2.
NOT_GSM = ["ç", "`", "ω", "\u00a0", "\u2019", "\u2126", "á", "ж", "😀"]

gsm_text = st.text(alphabet=st.sampled_from(GSM_BASIC + GSM_EXTENSION), max_size=600)
# Any text with at least one character outside GSM: the whole body is then UCS-2.
# Surrogate code points are left out: a Python str holding one is not valid text.
ucs2_text = st.tuples(
    st.text(max_size=300),
    st.sampled_from(NOT_GSM),
    st.text(max_size=300),
).map("".join)


def gsm_units(text: str) -> int:
    return sum(2 if ch in GSM_EXTENSION else 1 for ch in text)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_gsm_alphabet_is_the_whole_table() -> None:
    # 128 positions minus ESC, plus the extension table.
    assert len(set(GSM_BASIC)) == 127
    assert is_gsm7(GSM_BASIC + GSM_EXTENSION)
    for ch in NOT_GSM:
        assert not is_gsm7(ch), repr(ch)


def test_empty_body_is_billed_as_one_segment() -> None:
    assert count_segments("") == SegmentInfo("GSM-7", 1, 0)
    assert split_segments("") == [""]


def test_gsm_boundary_160_161() -> None:
    assert count_segments("a" * 160) == SegmentInfo("GSM-7", 1, 160)
    assert count_segments("a" * 161) == SegmentInfo("GSM-7", 2, 161)
    assert [len(p) for p in split_segments("a" * 161)] == [153, 8]
    assert count_segments("a" * 306).segments == 2
    assert count_segments("a" * 307).segments == 3


def test_extension_characters_cost_two_septets() -> None:
    assert count_segments("€" * 80) == SegmentInfo("GSM-7", 1, 160)
    assert count_segments("€" * 80 + "a").segments == 2
    assert count_segments("{}") == SegmentInfo("GSM-7", 1, 4)


def test_extension_character_at_153_boundary_moves_to_next_part() -> None:
    body = "a" * 152 + "€" + "a" * 152  # 306 septets: two parts if the pair could split
    parts = split_segments(body)
    assert [gsm_units(p) for p in parts] == [152, 153, 1]
    assert parts[1].startswith("€")
    assert count_segments(body) == SegmentInfo("GSM-7", 3, 306)


def test_extension_character_ending_exactly_at_153_stays() -> None:
    body = "a" * 151 + "€" + "b" * 10
    assert [gsm_units(p) for p in split_segments(body)] == [153, 10]


def test_ucs2_boundary_70_71() -> None:
    assert count_segments("ж" * 70) == SegmentInfo("UCS-2", 1, 70)
    assert count_segments("ж" * 71) == SegmentInfo("UCS-2", 2, 71)
    assert [len(p) for p in split_segments("ж" * 71)] == [67, 4]
    assert count_segments("ж" * 134).segments == 2
    assert count_segments("ж" * 135).segments == 3


def test_one_non_gsm_character_makes_the_whole_body_ucs2() -> None:
    assert count_segments("a" * 100 + "ç") == SegmentInfo("UCS-2", 2, 101)


def test_emoji_count_two_code_units() -> None:
    assert count_segments("😀" * 35) == SegmentInfo("UCS-2", 1, 70)
    assert count_segments("😀" * 36) == SegmentInfo("UCS-2", 2, 72)
    assert [len(p) for p in split_segments("😀" * 36)] == [33, 3]


def test_surrogate_pair_at_67_boundary_moves_to_next_part() -> None:
    body = "ж" * 66 + "😀" + "ж" * 5
    parts = split_segments(body)
    assert [utf16_units(p) for p in parts] == [66, 7]
    assert parts[1].startswith("😀")


def _check_parts(
    body: str, info: SegmentInfo, units_of: Callable[[str], int], single: int, per_part: int
) -> None:
    parts = split_segments(body)
    assert "".join(parts) == body
    assert len(parts) == info.segments
    if info.units <= single:
        assert parts == [body]
        return
    assert info.segments >= math.ceil(info.units / per_part)
    for part, following in pairwise(parts):
        assert part
        # Greedy and full: the next part's first character did not fit here.
        assert units_of(part) <= per_part
        assert units_of(part) + units_of(following[0]) > per_part
    assert 0 < units_of(parts[-1]) <= per_part


@given(gsm_text)
def test_gsm_bodies_count_septets_and_split_losslessly(body: str) -> None:
    info = count_segments(body)
    assert info.encoding == "GSM-7"
    assert info.units == gsm_units(body)
    _check_parts(body, info, gsm_units, GSM7_SINGLE_UNITS, GSM7_PART_UNITS)


@given(ucs2_text)
def test_ucs2_bodies_count_utf16_units_and_split_losslessly(body: str) -> None:
    info = count_segments(body)
    assert info.encoding == "UCS-2"
    assert info.units == utf16_units(body)
    _check_parts(body, info, utf16_units, UCS2_SINGLE_UNITS, UCS2_PART_UNITS)
    for part in split_segments(body):
        # No part starts or ends inside a surrogate pair.
        part.encode("utf-16-le")
