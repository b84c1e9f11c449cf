"""Encryption at rest for message bodies: XChaCha20-Poly1305 with a rotating keyring.

A blob is self-describing, so keys can rotate without a flag day:

    version (1 byte, 0x01) | key id length (1 byte) | key id (ASCII) | nonce (24) | ciphertext+tag

The header (version, key id) is authenticated together with the caller's associated
data, so a blob cannot be relabelled, and a blob copied to another row (different
message id / org id in the associated data) fails to decrypt.

Rotation: put a new key first in ENCRYPTION_KEYS, keep the old ones after it; new
writes use the first key, old rows still decrypt, and the re-encryption command
rewrites every blob whose `key_id_of` is not `primary_key_id`.

Each key also yields keys for keyed hashes (`hash_key`), for searching what is stored
encrypted (a blind index): derived one way from the key, so a hash reveals nothing of
the key, and bound to a context (a purpose and a tenant).

What a process decrypted it keeps, in memory only, for the next reads of the same blob
(`OPENED_KEPT` of them, the least recently read dropped first): a page of the inbox or
of a busy conversation is read again and again, and opening its 100 blobs anew was a
sixth of its CPU. A blob is kept with its associated data, so a blob read for another
row still fails, and a changed value is a new blob; nothing decrypted is written
anywhere.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import re
import stat
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

logger = logging.getLogger(__name__)

KEY_SIZE = nacl.secret.Aead.KEY_SIZE  # 32
NONCE_SIZE = nacl.secret.Aead.NONCE_SIZE  # 24
FORMAT_VERSION = 1
# Key ids are written into every blob and into the setting's "id:key" syntax, so they
# must be short and never contain the separators "," or ":".
_KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# The key id used for the key file the embedded default creates on first run.
LOCAL_KEY_ID = "local1"
# What a key's hash keys are derived under; never used to encrypt anything.
_HASH_KEY_LABEL = b"messaging blind index v1"
# How many decrypted values a keyring keeps (a few MB): the inbox of a busy desk, its
# names and newest messages, many times over.
OPENED_KEPT = 16384


class DecryptionError(Exception):
    """A blob that cannot be decrypted: malformed, unknown key id, or tampered with."""


def _check_key_id(key_id: str) -> None:
    if not _KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError(
            f"Encryption key id {key_id!r} is invalid: use 1 to 32 letters, digits, "
            "'_', '.' or '-', starting with a letter or digit."
        )


def _decode_key(key_id: str, encoded: str) -> bytes:
    # Error messages name the key id but never echo the key material.
    text = encoded.strip()
    # Accept URL-safe base64 and missing padding too: keys get pasted from many tools,
    # and a wrong key is still caught by the length check below.
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"Encryption key {key_id!r} is not valid base64.") from None
    if len(key) != KEY_SIZE:
        raise ValueError(
            f"Encryption key {key_id!r} is {len(key)} bytes; it must be {KEY_SIZE} bytes "
            "(44 characters of base64)."
        )
    return key


def key_id_of(blob: bytes) -> str:
    """The id of the key that encrypted `blob`; raises DecryptionError if it is malformed."""
    return _parse_header(blob)[0]


def _parse_header(blob: bytes) -> tuple[str, int]:
    """Key id and the offset where the nonce starts."""
    if len(blob) < 2:
        raise DecryptionError("Encrypted value is truncated.")
    if blob[0] != FORMAT_VERSION:
        raise DecryptionError(f"Encrypted value has unknown format version {blob[0]}.")
    id_length = blob[1]
    body_start = 2 + id_length
    if id_length == 0 or len(blob) < body_start + NONCE_SIZE + nacl.secret.Aead.MACBYTES:
        raise DecryptionError("Encrypted value is truncated.")
    try:
        key_id = blob[2:body_start].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("Encrypted value has a malformed key id.") from None
    return key_id, body_start


def _header(key_id: str) -> bytes:
    raw_id = key_id.encode("ascii")
    return bytes([FORMAT_VERSION, len(raw_id)]) + raw_id


class Keyring:
    """Named 32-byte keys: the first encrypts, all of them decrypt."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("The keyring needs at least one encryption key.")
        self._boxes: dict[str, nacl.secret.Aead] = {}
        self._hash_roots: dict[str, bytes] = {}
        for key_id, key in keys:
            _check_key_id(key_id)
            if key_id in self._boxes:
                raise ValueError(f"Encryption key id {key_id!r} appears more than once.")
            if len(key) != KEY_SIZE:
                raise ValueError(f"Encryption key {key_id!r} must be {KEY_SIZE} bytes.")
            self._boxes[key_id] = nacl.secret.Aead(key)
            self._hash_roots[key_id] = hmac.digest(key, _HASH_KEY_LABEL, hashlib.sha256)
        self._primary = keys[0][0]
        # (blob, associated data) -> its text; a failure is never kept.
        self._opened = functools.lru_cache(maxsize=OPENED_KEPT)(self._open)

    def __repr__(self) -> str:
        # Never show key material, even in a debugger or a log of locals.
        return f"Keyring(key_ids={list(self._boxes)!r})"

    @classmethod
    def from_setting(cls, value: str) -> Keyring:
        """Build a keyring from ENCRYPTION_KEYS: comma-separated `key_id:base64`, first encrypts."""
        if not value.strip():
            raise ValueError("ENCRYPTION_KEYS is empty; give at least one key_id:base64 entry.")
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate(value.split(","), start=1):
            entry = entry.strip()
            if not entry:
                raise ValueError(f"ENCRYPTION_KEYS entry {position} is empty (stray comma?).")
            key_id, sep, encoded = entry.partition(":")
            key_id = key_id.strip()
            if not sep:
                raise ValueError(
                    f"ENCRYPTION_KEYS entry {position} has no ':'; write it as key_id:base64."
                )
            _check_key_id(key_id)
            keys.append((key_id, _decode_key(key_id, encoded)))
        return cls(keys)

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        """Read the local key file, or create it (mode 0600) with one fresh key on first run."""
        try:
            return cls._read_key_file(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a private temporary file, then hard-link it into place: the link
        # fails if another process created the file meanwhile, so two processes
        # starting together agree on one key and nobody ever reads a half-written file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(generate_key_setting(LOCAL_KEY_ID) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls._read_key_file(path)

    @classmethod
    def _read_key_file(cls, path: Path) -> Keyring:
        mode = path.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                "Encryption key file %s is readable by other users; run chmod 600 on it.", path
            )
        # One format for the file and the setting, so the file's content can be moved
        # into ENCRYPTION_KEYS as is; several lines are joined like commas.
        lines = [
            line.strip()
            for line in path.read_text(encoding="ascii").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        try:
            return cls.from_setting(",".join(lines))
        except ValueError as exc:
            raise ValueError(f"Encryption key file {path}: {exc}") from None

    @property
    def primary_key_id(self) -> str:
        """The id of the key new blobs are encrypted with."""
        return self._primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id on the ring, primary first."""
        return tuple(self._boxes)

    key_id_of = staticmethod(key_id_of)

    def needs_reencryption(self, blob: bytes) -> bool:
        """True when `blob` was encrypted with a key other than the primary."""
        return key_id_of(blob) != self._primary

    def hash_key(self, key_id: str, context: bytes) -> bytes:
        """A 32-byte key for keyed hashes (HMAC-SHA256), derived from key `key_id` for
        `context` (e.g. a purpose and an organization id); raises DecryptionError for a
        key id not on the ring."""
        root = self._hash_roots.get(key_id)
        if root is None:
            raise DecryptionError(f"Key {key_id!r} is not in ENCRYPTION_KEYS.")
        return hmac.digest(root, context, hashlib.sha256)

    def encrypt(self, plaintext: str, aad: bytes) -> bytes:
        """Encrypt `plaintext` with the primary key, bound to `aad` (e.g. message id + org id)."""
        header = _header(self._primary)
        nonce = nacl.utils.random(NONCE_SIZE)
        sealed = self._boxes[self._primary].encrypt(
            plaintext.encode("utf-8"), aad=header + aad, nonce=nonce
        )
        # EncryptedMessage is nonce + ciphertext + tag, exactly the tail of our format.
        return header + bytes(sealed)

    def decrypt(self, blob: bytes, aad: bytes) -> str:
        """Decrypt a blob made by `encrypt` with the same `aad`; raises DecryptionError."""
        return self._opened(blob, aad)

    def _open(self, blob: bytes, aad: bytes) -> str:
        key_id, body_start = _parse_header(blob)
        box = self._boxes.get(key_id)
        if box is None:
            raise DecryptionError(
                f"Encrypted value uses key {key_id!r}, which is not in ENCRYPTION_KEYS."
            )
        try:
            plaintext = box.decrypt(blob[body_start:], aad=blob[:body_start] + aad)
        except nacl.exceptions.CryptoError:
            raise DecryptionError(
                "Encrypted value failed authentication: it was altered or belongs to another row."
            ) from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("Decrypted value is not UTF-8 text.") from None


def generate_key_setting(key_id: str) -> str:
    """A fresh random key as one ENCRYPTION_KEYS entry, `key_id:base64`."""
    _check_key_id(key_id)
    key = nacl.utils.random(KEY_SIZE)
    return f"{key_id}:{base64.b64encode(key).decode('ascii')}"
