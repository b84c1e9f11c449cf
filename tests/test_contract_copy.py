"""The contract the README points to is in the repository (`docs/API.md`), and stays the
same as the shared one beside the repository (`../shared/API.md`) where that exists."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY = ROOT / "docs" / "API.md"
SHARED = ROOT.parent / "shared" / "API.md"


def test_the_contract_is_in_the_repository_and_matches_the_shared_one() -> None:
    assert COPY.is_file(), "docs/API.md is missing: cp ../shared/API.md docs/API.md"
    assert "# Messaging service: the contract" in COPY.read_text()
    if SHARED.is_file():
        assert COPY.read_text() == SHARED.read_text(), (
            "docs/API.md differs from ../shared/API.md: cp ../shared/API.md docs/API.md"
        )
