"""API rate limits at the HTTP edge: every `/v1` request passes one middleware."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import TooManyRequests
from app.infra.limiters import ApiRateLimiter
from app.metrics import RATE_LIMIT_REFUSALS, Children
from app.responses import app_error_response
from app.security import bearer_token, hash_token

API_PREFIX = "/v1/"

class RateLimitMiddleware:
    """Charges every `/v1` request to its bearer token and counts the 401s each client
    address earns; past either limit: 429 `too_many_requests` with Retry-After.

    Why a middleware rather than a dependency: the API checks tokens in several ways
    (the `CurrentUser` family of dependencies, the history read that checks the token
    inside its own SQL statement, the operator's token), and a failed check becomes a
    401 deep inside the framework. Only here does every `/v1` request, and every 401 it
    ends in, pass one place, before any route runs. Everything else (health, readiness,
    metrics, the docs, carrier webhooks) passes untouched.

    An address refused for its failures is answered before its token is looked at, so
    a valid token from it is refused too: that is what slows a guesser down. The
    address is `request.client.host`: the peer, or behind a trusted proxy the client
    the proxy names (uvicorn `--proxy-headers`).
    """

    def __init__(self, app: ASGIApp, limiter: Callable[[], ApiRateLimiter]) -> None:
        self.app = app
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _route_path(scope).startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        limiter = self._limiter()
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        try:
            limiter.check_address(address)
            token = bearer_token(scope["headers"])
            if token:
                await limiter.charge(hash_token(token))
        except TooManyRequests as refusal:
            _count_refusal(refusal)
            await app_error_response(refusal)(scope, receive, send)
            return

        replaced = False

        async def send_counting_failures(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of a 401 answered with a 429 instead
            if message["type"] == "http.response.start" and message["status"] == 401:
                # Counted before the 401 leaves: the client's next request meets the limit.
                refusal = await limiter.count_auth_failure(address)
                if refusal is not None:
                    replaced = True
                    _count_refusal(refusal)
                    await app_error_response(refusal)(scope, receive, send)
                    return
            await send(message)

        await self.app(scope, receive, send_counting_failures)


_REFUSALS = Children(RATE_LIMIT_REFUSALS)


def _count_refusal(refusal: TooManyRequests) -> None:
    details = refusal.details if isinstance(refusal.details, dict) else {}
    _REFUSALS(str(details.get("limited_by", "token"))).inc()


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the prefix the app is served under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path

