"""The API's documentation page, Swagger UI, served whole by the service: its script,
style and icon come from the `swagger-ui-py` package, never from a CDN, so `/docs`
works on a machine without internet access."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import swagger_ui
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from app.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS_PATH = "/docs/assets"
_ASSET_DIR = Path(swagger_ui.__file__).resolve().parent / "static"
# The files the page loads, and nothing else of the package.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


@router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI, its assets served from here, under whatever prefix the app is served."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        oauth2_redirect_url=None,
        # No online validator badge: it would call validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
    )


@router.get(ASSETS_PATH + "/{name}")
async def docs_asset(name: Annotated[str, PathParam(max_length=64)]) -> FileResponse:
    """One of the page's files, cacheable for a day."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound("No such documentation asset.", code="not_found")
    return FileResponse(
        _ASSET_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )
