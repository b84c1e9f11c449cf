"""The OpenAPI document as client generators, linters and readers need it. Wiring only:
what it says comes from the routes, their dependencies and the schemas.

- Operations are named by their endpoint functions (`send_message`), schemas by what
  they hold (`MessagePage`).
- Each operation lists the errors it can answer, per status, with their codes as an
  enum, in one schema of its own (`SendMessageError`): the codes its services raise
  (named in its decorator, `app.schemas.errors.errors`), and those that follow from
  what it depends on: a token (401), an admin (403), a body or parameters (400, 413,
  422), the rate limits of `/v1` (429 with `Retry-After`), the database (503).
  `details` is typed per code: its `anyOf` lists the shapes (what generators read),
  and an `if`/`then` per code ties each code to its shape (what validators check).
- The event stream's events are described as schemas (`StreamEvent`, one per event).
- The carriers' webhooks are described under the document's `webhooks`, not its
  `paths`: carriers call them, never a client of the API, and client generators build
  functions from `paths` only. Readers (`/docs`) still see them, with their signature
  headers, under "Webhooks".
- Public operations (health, readiness, metrics, webhooks) say `security: []`; every
  other one needs the bearer token.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel, TypeAdapter

from app.deps import get_admin, get_current_user, get_operator, get_stream_token_hash, get_token
from app.schemas.errors import CODES
from app.schemas.events import StreamEvent

_REF = "#/components/schemas/{model}"
API_PREFIX = "/v1/"
_NEEDS_DATABASE = ("/v1/", "/webhooks/")

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the request may be made again.",
        "schema": {"type": "integer"},
    }
}


def operation_id(route: APIRoute) -> str:
    """An operation's id: its endpoint function's name (`send_message`)."""
    return route.name


def document_api(app: FastAPI) -> None:
    """Make `app.openapi()` return the document described above (built once)."""
    build = app.openapi
    done: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not done:
            done.update(_finish(app, build()))
        return done

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    routes = {
        (route.path_format, method.lower()): route
        for route in iter_route_contexts([*app.routes, *app.webhooks.routes])
        if isinstance(route.original_route, APIRoute)
        for method in route.methods or ()
    }
    document["security"] = [{"HTTPBearer": []}]
    for section in ("paths", "webhooks"):
        for path, operations in document.get(section, {}).items():
            for method, operation in operations.items():
                route = routes[(path, method)]
                operation["summary"] = operation["operationId"].replace("_", " ").capitalize()
                operation.setdefault("security", [])
                _document_errors(route, operation, components)
    _add_shapes(components, "StreamEvent", StreamEvent)
    components["StreamEvent"]["description"] = (
        "One event of `GET /v1/events`, sent as the Server-Sent Events fields `id`, "
        "`event` (its name) and `data` (one line of JSON). Comments are heartbeats."
    )
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return document


# --- errors ---------------------------------------------------------------------------


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _has_parameters(dependant: Dependant) -> bool:
    """Whether the route takes parameters a client may get wrong (documented ones)."""
    fields = [*dependant.path_params, *dependant.query_params, *dependant.header_params]
    if any(getattr(f.field_info, "include_in_schema", True) for f in fields):
        return True
    return any(_has_parameters(d) for d in dependant.dependencies)


def codes_of(route: RouteContext, declared: list[str]) -> list[str]:
    """Every error code the route can answer: those its services raise (`declared`),
    and those that follow from what it depends on and where it is."""
    calls = set(_calls(route.dependant))
    codes = list(declared)
    if calls & {get_token, get_current_user, get_operator, get_stream_token_hash}:
        codes += ["missing_token", "invalid_token"]
    if get_stream_token_hash in calls:
        codes += ["invalid_ticket", "token_in_url", "ambiguous_credentials", "tickets_unavailable"]
    if get_admin in calls:
        codes.append("admin_required")
    if get_operator in calls:
        codes.append("operator_disabled")
    if route.body_field is not None:
        codes += [
            "malformed_json",
            "bad_request",
            "payload_too_large",
            "unsupported_media_type",
            "validation_error",
        ]
    if _has_parameters(route.dependant):
        codes.append("validation_error")
    path = route.path_format or ""
    if path.startswith("/webhooks/"):
        codes.append("payload_too_large")
    if path.startswith(API_PREFIX):
        codes.append("too_many_requests")
    if path.startswith(_NEEDS_DATABASE):
        codes += ["database_unavailable", "database_busy"]
    return sorted(set(codes), key=lambda c: (CODES[c].status, c))


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _document_errors(
    route: RouteContext, operation: dict[str, Any], components: dict[str, Any]
) -> None:
    codes = codes_of(route, operation.pop("x-error-codes", []))
    responses: dict[str, Any] = operation["responses"]
    for answered in [s for s in responses if s[:1] in "45"]:
        del responses[answered]
    if not codes:
        return
    name = _pascal(operation["operationId"]) + "Error"
    components[name] = {
        "type": "object",
        "title": name,
        "description": f"An error of `{operation['operationId']}`.",
        "required": ["error"],
        "properties": {"error": {"$ref": _REF.format(model=name + "Detail")}},
    }
    components[name + "Detail"] = _error_detail(name + "Detail", codes, components)
    for status in sorted({CODES[c].status for c in codes}):
        here = [c for c in codes if CODES[c].status == status]
        response: dict[str, Any] = {
            "description": " ".join(f"`{c}`: {CODES[c].description}" for c in here),
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}},
        }
        if "too_many_requests" in here:
            response["headers"] = _RETRY_AFTER
        responses[str(status)] = response


def _error_detail(title: str, codes: list[str], components: dict[str, Any]) -> dict[str, Any]:
    shapes: list[dict[str, Any]] = []
    conditions: list[dict[str, Any]] = []
    for code in codes:
        shape = (
            {"type": "null"}
            if CODES[code].details is None
            else _add_shapes(components, None, CODES[code].details)
        )
        if shape not in shapes:
            shapes.append(shape)
        conditions.append(
            {
                "if": {"properties": {"code": {"const": code}}},
                "then": {"properties": {"details": shape}},
            }
        )
    return {
        "type": "object",
        "title": title,
        "required": ["code", "message", "details"],
        "properties": {
            "code": {"type": "string", "enum": codes, "description": "What went wrong."},
            "message": {"type": "string", "description": "A sentence for people."},
            "details": {
                **({"anyOf": shapes} if len(shapes) > 1 else shapes[0]),
                "description": "By code: "
                + "; ".join(
                    f"`{c}`: {_shape_name(CODES[c].details)}"
                    for c in codes
                    if CODES[c].details is not None
                )
                + (". Null for the others." if len(shapes) > 1 else "null."),
            },
        },
        "allOf": conditions,
    }


def _shape_name(shape: Any) -> str:
    if isinstance(shape, type):
        return shape.__name__
    text = re.sub(r"\w+\.", "", str(shape))
    return text.replace("list[", "a list of ").replace("]", "").replace("dict[str, str", "a map")


# --- shapes as components -----------------------------------------------------------------


def _add_shapes(components: dict[str, Any], name: str | None, shape: Any) -> dict[str, Any]:
    """Put the JSON schema of `shape` (a model, a list, a map or a union of them) and the
    models it holds in `components`; return a schema that refers to it. With `name`,
    the whole shape is a component of that name."""
    if name is None and isinstance(shape, type) and issubclass(shape, BaseModel):
        name = shape.__name__
    if name is not None and name in components:
        return {"$ref": _REF.format(model=name)}
    origin = typing.get_origin(shape)
    if name is None and origin in (types.UnionType, typing.Union):
        return {"anyOf": [_add_shapes(components, None, arg) for arg in typing.get_args(shape)]}
    if name is None and origin is list:
        (item,) = typing.get_args(shape)
        return {"type": "array", "items": _add_shapes(components, None, item)}
    schema = TypeAdapter(shape).json_schema(ref_template=_REF, mode="serialization")
    for model, definition in schema.pop("$defs", {}).items():
        components.setdefault(model, definition)
    if name is None:
        return schema
    components[name] = schema
    return {"$ref": _REF.format(model=name)}
