"""JSON responses: rendered with orjson, and the contract's error body."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from app.errors import AppError


class FastJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, message: str, details: Any = None) -> FastJSONResponse:
    """The contract's error body."""
    return FastJSONResponse(
        {"error": {"code": code, "message": message, "details": details}}, status_code=status
    )


def app_error_response(exc: AppError) -> FastJSONResponse:
    """A domain error as the contract's error body, with the headers it calls for."""
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    response.headers.update(exc.headers)
    return response
