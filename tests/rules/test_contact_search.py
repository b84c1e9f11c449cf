"""The blind index's rules: what a search asks for, and what matches it."""

from __future__ import annotations

import uuid

import pytest

from app.crypto import Keyring, generate_key_setting
from app.errors import Invalid
from app.services.contact_search import Search, contact_terms, parse_search, words

RING = Keyring.from_setting(generate_key_setting("k1"))
ORG = uuid.uuid4()


def test_words_fold_case_accents_and_punctuation() -> None:
    assert words("  María-José  O'BRIEN, Ñuñez ") == ["maria", "jose", "o", "brien", "nunez"]
    assert words("Zoë Åström") == ["zoe", "astrom"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("mar", Search(words=("mar",))),
        ("Maria  GONZ", Search(words=("maria", "gonz"))),
        ("+1 (415) 555-0100", Search(digits="14155550100")),
        ("0100", Search(digits="0100")),
        ("r2d2", Search(words=("r2d2",))),
        ("ana ana", Search(words=("ana",))),
    ],
)
def test_a_search_text_asks_for_words_or_digits(q: str, expected: Search) -> None:
    assert parse_search(q) == expected


@pytest.mark.parametrize("q", ["?!", "  ", "---", "()"])
def test_a_search_text_without_letters_or_digits_is_refused(q: str) -> None:
    with pytest.raises(Invalid) as raised:
        parse_search(q)
    assert raised.value.code == "invalid_search"


@pytest.mark.parametrize(
    ("q", "name", "number", "found"),
    [
        ("gonz", "María González", "+14155550100", True),
        ("ma", "María González", "+14155550100", True),
        ("ar", "María González", "+14155550100", False),  # short: the start of a word
        ("ari", "María González", "+14155550100", True),  # longer: anywhere in one
        ("gonzalez maria", "María González", "+14155550100", True),
        ("olan", "Nola Landry", "+14155550100", False),  # pieces in two words
        ("5550", "Anyone", "+14155550100", True),
        ("5551", "Anyone", "+14155550100", False),
    ],
)
def test_what_matches(q: str, name: str, number: str, found: bool) -> None:
    assert parse_search(q).matches(name, number) is found


@pytest.mark.parametrize(
    ("q", "name", "number"),
    [
        ("gonz", "María González", "+14155550100"),
        ("ma", "María González", "+14155550100"),
        ("maria gon", "María González", "+14155550100"),
        ("550", "María González", "+14155550100"),
        ("4155550100", "María González", "+14155550100"),
    ],
)
def test_a_match_holds_every_term_of_its_search(q: str, name: str, number: str) -> None:
    # No false negatives: the index offers every contact the real test would accept.
    search = parse_search(q)
    assert search.matches(name, number)
    stored = contact_terms(RING, RING.primary_key_id, ORG, name, number)
    terms, needed = search.terms(RING, ORG)
    assert len(stored & set(terms)) == needed


def test_terms_differ_between_organizations_and_keys() -> None:
    other = Keyring.from_setting(generate_key_setting("k1"))
    mine = contact_terms(RING, "k1", ORG, "Ana Silva", "+14155550100")
    assert not mine & contact_terms(RING, "k1", uuid.uuid4(), "Ana Silva", "+14155550100")
    assert not mine & contact_terms(other, "k1", ORG, "Ana Silva", "+14155550100")


def test_a_long_search_looks_up_a_few_pieces_from_every_word() -> None:
    search = parse_search("Bartholomew Featherstonehaugh-Quigley")
    chosen = search.lookup_pieces()
    assert len(chosen) == 6 and len(search.pieces) > 20
    # Each word contributes (its first runs first), and what is looked up is what a match
    # holds: the index still offers every real match.
    assert chosen[:3] == ["t:bar", "t:fea", "t:qui"]
    name, number = "Bartholomew Featherstonehaugh-Quigley", "+14155550100"
    stored = contact_terms(RING, RING.primary_key_id, ORG, name, number)
    assert all(set(terms) & stored for terms in search.terms_by_piece(RING, ORG))
