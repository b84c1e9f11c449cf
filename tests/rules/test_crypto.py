"""Encryption at rest: bodies round-trip, keys rotate, and tampering is caught."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.crypto import (
    LOCAL_KEY_ID,
    DecryptionError,
    Keyring,
    generate_key_setting,
    key_id_of,
)

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(100, 132))).decode()
RING_A = Keyring.from_setting(f"a:{KEY_A}")
AAD = b"message:0b6f2c4e|org:7d1e"


@given(st.text(max_size=2000), st.binary(max_size=64))
def test_round_trip(plaintext: str, aad: bytes) -> None:
    blob = RING_A.encrypt(plaintext, aad)
    assert RING_A.decrypt(blob, aad) == plaintext
    assert key_id_of(blob) == "a"


@given(st.text(min_size=12, max_size=500))
def test_no_plaintext_in_ciphertext(plaintext: str) -> None:
    blob = RING_A.encrypt(plaintext, AAD)
    assert plaintext.encode() not in blob


def test_same_plaintext_encrypts_differently_each_time() -> None:
    assert RING_A.encrypt("Your appointment is at 3pm", AAD) != RING_A.encrypt(
        "Your appointment is at 3pm", AAD
    )


def test_blob_copied_to_another_row_does_not_decrypt() -> None:
    blob = RING_A.encrypt("Lab results are ready", b"message:1|org:1")
    with pytest.raises(DecryptionError):
        RING_A.decrypt(blob, b"message:2|org:1")
    with pytest.raises(DecryptionError):
        RING_A.decrypt(blob, b"message:1|org:2")


def test_a_value_read_before_is_kept_for_its_own_row_only() -> None:
    """Decrypted values are kept for the next reads of the same blob, with its associated
    data: the same blob read for another row, or under a ring without its key, still
    fails after a successful read, and a failure is never kept."""
    ring = Keyring.from_setting(f"a:{KEY_A}")
    blob = ring.encrypt("Your results are in", b"message:1|org:1")
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, b"message:9|org:1")
    for _ in range(2):
        assert ring.decrypt(blob, b"message:1|org:1") == "Your results are in"
        with pytest.raises(DecryptionError):
            ring.decrypt(blob, b"message:1|org:2")
    with pytest.raises(DecryptionError):
        Keyring.from_setting(f"b:{KEY_B}").decrypt(blob, b"message:1|org:1")


@given(st.data())
def test_any_flipped_bit_is_caught(data: st.DataObject) -> None:
    blob = bytearray(RING_A.encrypt("Call us back about your refill", AAD))
    index = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    blob[index] ^= 1 << bit
    with pytest.raises(DecryptionError):
        RING_A.decrypt(bytes(blob), AAD)


@pytest.mark.parametrize("cut", [0, 1, 2, 5, 20, 40])
def test_truncated_blob_is_a_decryption_error(cut: int) -> None:
    blob = RING_A.encrypt("hi", AAD)
    with pytest.raises(DecryptionError):
        RING_A.decrypt(blob[:cut], AAD)


def test_key_id_of_malformed_blob_is_a_decryption_error() -> None:
    with pytest.raises(DecryptionError):
        key_id_of(b"\x02\x01a" + bytes(40))
    with pytest.raises(DecryptionError):
        key_id_of(b"")


def test_rotation_keeps_old_blobs_readable() -> None:
    old_blob = RING_A.encrypt("before rotation", AAD)
    rotated = Keyring.from_setting(f"b:{KEY_B}, a:{KEY_A}")
    assert rotated.primary_key_id == "b"
    assert rotated.key_ids == ("b", "a")
    assert rotated.decrypt(old_blob, AAD) == "before rotation"
    assert rotated.needs_reencryption(old_blob)

    new_blob = rotated.encrypt("after rotation", AAD)
    assert key_id_of(new_blob) == "b"
    assert not rotated.needs_reencryption(new_blob)
    # The old keyring alone cannot read what the new key wrote.
    with pytest.raises(DecryptionError, match="'b'"):
        RING_A.decrypt(new_blob, AAD)


def test_same_key_under_another_id_does_not_decrypt() -> None:
    # The key id is authenticated: relabelling a blob is tampering.
    blob = RING_A.encrypt("x", AAD)
    relabelled = Keyring.from_setting(f"z:{KEY_A}")
    forged = blob[:2] + b"z" + blob[3:]
    with pytest.raises(DecryptionError):
        relabelled.decrypt(forged, AAD)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a", "no ':'"),
        (f"a:{KEY_A},", "entry 2 is empty"),
        (f",a:{KEY_A}", "entry 1 is empty"),
        ("a:not base64!", "not valid base64"),
        ("a:" + base64.b64encode(bytes(16)).decode(), "16 bytes"),
        (f"a:{KEY_A},a:{KEY_B}", "more than once"),
        (f"bad id:{KEY_A}", "invalid"),
        (f"-a:{KEY_A}", "invalid"),
        (f"{'k' * 33}:{KEY_A}", "invalid"),
        (f":{KEY_A}", "invalid"),
    ],
)
def test_bad_settings_are_refused_clearly(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Keyring.from_setting(setting)
    # Never echo key material into logs.
    assert KEY_A not in str(caught.value)
    assert KEY_B not in str(caught.value)


def test_url_safe_and_unpadded_keys_are_accepted() -> None:
    raw = bytes([0xFB, 0xFF] * 16)
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    ring = Keyring.from_setting(f"k1:{urlsafe}")
    standard = Keyring.from_setting(f"k1:{base64.b64encode(raw).decode()}")
    assert standard.decrypt(ring.encrypt("same key", AAD), AAD) == "same key"


def test_generated_setting_parses() -> None:
    setting = generate_key_setting("2025-01")
    ring = Keyring.from_setting(setting)
    assert ring.primary_key_id == "2025-01"
    assert generate_key_setting("x") != generate_key_setting("x")
    with pytest.raises(ValueError):
        generate_key_setting("has:colon")


def test_repr_shows_ids_not_keys() -> None:
    text = repr(Keyring.from_setting(f"a:{KEY_A},b:{KEY_B}"))
    assert "'a'" in text and "'b'" in text
    assert KEY_A not in text and KEY_B not in text


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "encryption.key"
    first = Keyring.load_or_create(path)
    assert first.primary_key_id == LOCAL_KEY_ID
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The file holds a setting that can be moved into ENCRYPTION_KEYS as is.
    from_file = Keyring.from_setting(path.read_text().strip())
    blob = first.encrypt("kept across restarts", AAD)
    assert Keyring.load_or_create(path).decrypt(blob, AAD) == "kept across restarts"
    assert from_file.decrypt(blob, AAD) == "kept across restarts"
    assert [p.name for p in path.parent.iterdir()] == ["encryption.key"]


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "encryption.key"
    rings: list[Keyring] = []
    start = threading.Barrier(8)

    def load() -> None:
        start.wait()
        rings.append(Keyring.load_or_create(path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    blob = rings[0].encrypt("one key", AAD)
    assert all(ring.decrypt(blob, AAD) == "one key" for ring in rings)


def test_corrupt_key_file_is_an_error_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "encryption.key"
    path.write_text("local1:short\n")
    with pytest.raises(ValueError, match=str(path)):
        Keyring.load_or_create(path)
    assert path.read_text() == "local1:short\n"


def test_key_file_may_hold_several_keys_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "encryption.key"
    path.write_text(f"# rotated 2025-01\nb:{KEY_B}\na:{KEY_A}\n")
    path.chmod(0o600)
    ring = Keyring.load_or_create(path)
    assert ring.key_ids == ("b", "a")


def test_hash_keys_are_derived_per_key_and_context_and_never_the_key() -> None:
    ring = Keyring.from_setting(f"{generate_key_setting('new')},{generate_key_setting('old')}")
    a = ring.hash_key("new", b"purpose:org-a")
    assert a == ring.hash_key("new", b"purpose:org-a") and len(a) == 32
    assert a != ring.hash_key("new", b"purpose:org-b")
    assert a != ring.hash_key("old", b"purpose:org-a")
    with pytest.raises(DecryptionError):
        ring.hash_key("gone", b"purpose:org-a")
    assert bytes(range(32)) not in (RING_A.hash_key("a", b""), RING_A.hash_key("a", b"x"))
