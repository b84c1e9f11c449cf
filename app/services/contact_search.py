"""Finding contacts by parts of their name or number while names are stored encrypted
only: a blind index.

Beside its sealed name, a contact stores keyed hashes ("terms") of the pieces a search
can ask for: of every word of its name (case, accents and punctuation folded away) its
first letter, its first two letters and each run of three letters; of its number's
digits each run of three. The hash key is derived from the encryption key that sealed
the name, for the contact's organization (`Keyring.hash_key`), so the database holds
neither a name nor anything that computes a term, and equal names in two organizations
share no term.

A search text is cut into the same pieces. Every word of it must be found in a word of
the name (a word of one or two letters at the start of one), or, for a text of digits
and phone punctuation, its digits in the number. The database finds the candidates by
their terms (an index lookup); only those are decrypted and checked for the real match,
so a piece shared by chance never reaches the client.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from app.crypto import Keyring
from app.errors import Invalid

# A word: letters and digits (any script), nothing else.
_WORD = re.compile(r"[^\W_]+")
# What someone typing a phone number may put between its digits.
_NUMBER_TEXT = re.compile(r"[0-9\s+().\-]+")
_NOT_DIGIT = re.compile(r"[^0-9]")
# Words this short match the start of a word of the name; longer ones anywhere in one.
SHORT_WORD = 2
_GRAM = 3
_TERM_BYTES = 8
# The most pieces of one search looked up one by one (`Search.lookup_pieces`).
LOOKUP_PIECES = 6
_CONTEXT = b"contact-search:"


def words(text: str) -> list[str]:
    """The words of a text as search compares them: accents removed, case folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WORD.findall(plain.casefold())


def digits_of(number: str) -> str:
    return _NOT_DIGIT.sub("", number)


def _runs(text: str) -> Iterable[str]:
    return (text[i : i + _GRAM] for i in range(len(text) - _GRAM + 1))


def _name_pieces(word: str) -> set[str]:
    pieces = {"p:" + word[:n] for n in range(1, min(SHORT_WORD, len(word)) + 1)}
    pieces.update("t:" + run for run in _runs(word))
    return pieces


def _number_pieces(digits: str) -> set[str]:
    return {"n:" + run for run in _runs(digits)}


def _hashed(keyring: Keyring, key_id: str, org_id: uuid.UUID, pieces: Iterable[str]) -> set[int]:
    key = keyring.hash_key(key_id, _CONTEXT + org_id.bytes)
    return {
        int.from_bytes(hmac.digest(key, p.encode(), "sha256")[:_TERM_BYTES], "big", signed=True)
        for p in pieces
    }


def contact_terms(
    keyring: Keyring, key_id: str, org_id: uuid.UUID, name: str, number: str
) -> set[int]:
    """The terms a contact is stored with, under the key (`key_id`) that sealed its name."""
    pieces = _number_pieces(digits_of(number))
    for word in words(name):
        pieces |= _name_pieces(word)
    return _hashed(keyring, key_id, org_id, pieces)


@dataclass(frozen=True)
class Search:
    """What a search text asks for: words found in a name, or digits in a number."""

    words: tuple[str, ...] = ()
    digits: str = ""

    @property
    def pieces(self) -> set[str]:
        """The pieces every match holds; none for a search of one or two digits (then
        the numbers, stored in plain, are scanned)."""
        if self.digits:
            return _number_pieces(self.digits)
        pieces: set[str] = set()
        for word in self.words:
            pieces |= {"p:" + word} if len(word) <= SHORT_WORD else {"t:" + r for r in _runs(word)}
        return pieces

    def lookup_pieces(self) -> list[str]:
        """At most `LOOKUP_PIECES` of the pieces, taken in turn from each word: enough to
        find the candidates (the real test checks the rest), few enough that the queries
        looking them up come in a bounded number of shapes."""
        if self.digits:
            return sorted(self.pieces)[:LOOKUP_PIECES]
        per_word = [
            ["p:" + w] if len(w) <= SHORT_WORD else ["t:" + r for r in _runs(w)]
            for w in self.words
        ]
        chosen: list[str] = []
        for turn in range(max(len(p) for p in per_word)):
            for pieces in per_word:
                if turn < len(pieces) and pieces[turn] not in chosen:
                    chosen.append(pieces[turn])
        return chosen[:LOOKUP_PIECES]

    def terms_by_piece(self, keyring: Keyring, org_id: uuid.UUID) -> list[list[int]]:
        """The terms of each of the `lookup_pieces` under every key on the ring: a match
        holds one of each."""
        return [
            sorted(t for key_id in keyring.key_ids for t in _hashed(keyring, key_id, org_id, [p]))
            for p in self.lookup_pieces()
        ]

    def terms(self, keyring: Keyring, org_id: uuid.UUID) -> tuple[list[int], int]:
        """The pieces' terms under every key on the ring (a contact's terms are under the
        key that sealed its name, which during a rotation may be an older one), and how
        many of them one matching contact holds."""
        pieces = self.pieces
        found: set[int] = set()
        for key_id in keyring.key_ids:
            found |= _hashed(keyring, key_id, org_id, pieces)
        return sorted(found), len(pieces)

    def matches(self, name: str | None, number: str | None) -> bool:
        """The real test, on the plain name and number of a candidate."""
        if self.digits:
            return number is not None and self.digits in digits_of(number)
        if name is None:
            return False
        name_words = words(name)
        return all(
            any(w.startswith(word) if len(word) <= SHORT_WORD else word in w for w in name_words)
            for word in self.words
        )


def parse_search(q: str) -> Search:
    """The search a `q` parameter asks for: digits when it holds nothing but a number's
    digits and punctuation, else words; 422 `invalid_search` when it holds neither."""
    if _NUMBER_TEXT.fullmatch(q) and (digits := digits_of(q)):
        return Search(digits=digits)
    found = words(q)
    if not found:
        raise Invalid(
            "Search for a name or a number: the text needs at least one letter or digit.",
            code="invalid_search",
            details=[{"field": "q"}],
        )
    return Search(words=tuple(dict.fromkeys(found)))
