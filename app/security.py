"""Token generation and hashing: tokens are shown once and stored only as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from fastapi.security.utils import get_authorization_scheme_param

TOKEN_PREFIX = "msk_"  # noqa: S105 - a public prefix, not a secret
# A stream ticket looks unlike a token, so neither is mistaken for the other in a log.
STREAM_TICKET_PREFIX = "mst_"


def new_token() -> str:
    """A fresh bearer token with 256 bits of entropy."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_stream_ticket() -> str:
    """A fresh single-use event stream ticket with 256 bits of entropy."""
    return STREAM_TICKET_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token. A fast hash suffices: tokens are random, not passwords."""
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    """Constant-time comparison, so response times leak nothing about a secret."""
    return hmac.compare_digest(a.encode(), b.encode())


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header among raw ASGI headers, as
    the API's routes read it (FastAPI's HTTPBearer), unchecked; None without one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, credentials = get_authorization_scheme_param(value.decode("latin-1"))
            return credentials if scheme.lower() == "bearer" and credentials else None
    return None
