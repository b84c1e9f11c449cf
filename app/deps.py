"""Typed dependency aliases, so every route reads as its signature."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.errors import AppError, Unauthorized
from app.security import hash_token
from app.services import streams
from app.services.auth import Principal, authenticate_user, check_operator, require_admin

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer <token>`")


async def get_context(request: Request) -> AppContext:
    # Async: FastAPI runs a plain function dependency in a thread pool, per request.
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_session(ctx: ContextDep) -> AsyncIterator[AsyncSession]:
    session = ctx.sessionmaker()
    try:
        yield session
    finally:
        # Closing runs after the response has gone out: a database that stopped
        # answering meanwhile must not turn into an error on an answered request (the
        # connection is dropped, not reused).
        try:
            await session.close()
        except Exception as exc:
            log.warning("session not closed cleanly", extra={"fields": {"error": repr(exc)}})


SessionDep = Annotated[AsyncSession, Depends(get_session)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "Send an API token as 'Authorization: Bearer <token>'.", code="missing_token"
        )
    return credentials.credentials


async def get_token(credentials: Credentials) -> str:
    """The bearer token, not yet checked: for the few routes that check it in their own
    statement (`auth.token_owner`)."""
    return _token(credentials)


BearerToken = Annotated[str, Depends(get_token)]


async def get_current_user(
    request: Request, session: SessionDep, credentials: Credentials
) -> Principal:
    principal = await authenticate_user(session, _token(credentials))
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_admin(principal: CurrentUser) -> Principal:
    require_admin(principal)
    return principal


AdminUser = Annotated[Principal, Depends(get_admin)]


async def get_operator(ctx: ContextDep, credentials: Credentials) -> str:
    check_operator(ctx.settings.operator_token, _token(credentials))
    return "operator"


Operator = Annotated[str, Depends(get_operator)]


# Query parameters a client might put a token in; a token in a URL ends up in logs,
# histories and Referer headers, so such a request is refused whatever else it holds.
_TOKEN_PARAMETERS = ("token", "access_token")


async def get_stream_token_hash(
    request: Request,
    ctx: ContextDep,
    credentials: Credentials,
    ticket: Annotated[
        str | None,
        Query(
            max_length=128,
            description="A ticket from `POST /v1/events/tickets`, for clients that cannot "
            "send an Authorization header (a browser's EventSource). Single use, valid 60 "
            "seconds. Tokens themselves are never accepted in a URL.",
        ),
    ] = None,
) -> str:
    """The token hash an event stream opens as: the bearer token's, or the one its
    stream ticket stands for (the ticket used up)."""
    if any(name in request.query_params for name in _TOKEN_PARAMETERS):
        raise AppError(
            "Tokens are never accepted in a URL: send 'Authorization: Bearer <token>', or "
            "get a stream ticket (POST /v1/events/tickets) and pass ?ticket=.",
            code="token_in_url",
        )
    if ticket is None:
        return hash_token(_token(credentials))
    if credentials is not None:
        raise AppError(
            "Send either a bearer token or a stream ticket, not both.",
            code="ambiguous_credentials",
        )
    return await streams.redeem_ticket(ctx.streams, ctx.api_limits, ticket)


StreamTokenHash = Annotated[str, Depends(get_stream_token_hash)]
