"""`/docs` works with no internet access: the page names no other host, and the service
serves every file it loads. (The browser test renders it: tests/system/test_browser.py.)"""

from __future__ import annotations

import re
from typing import Any

import httpx

# Every URL the page loads: script and style sources, links, and strings in its script.
_URLS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


def _loaded_urls(page: str) -> list[str]:
    return [a or b for a, b in _URLS.findall(page)]


async def test_docs_page_names_no_other_host_and_its_assets_are_served(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert not re.search(r"(https?:)?//", page), re.findall(r"\S*//\S+", page)
    urls = _loaded_urls(page)
    assert "/openapi.json" in urls, urls
    kinds = {
        ".js": "text/javascript",
        ".css": "text/css",
        ".png": "image/png",
    }
    assets = [u for u in urls if u.startswith("/docs/assets/")]
    assert {u.rsplit(".", 1)[1] for u in assets} == {"js", "css", "png"}, urls
    for url in assets:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        expected = next(v for k, v in kinds.items() if url.endswith(k))
        assert asset.headers["content-type"].startswith(expected), asset.headers
        assert len(asset.content) > 1000
    (script,) = [u for u in assets if u.endswith(".js")]
    assert "SwaggerUIBundle" in (await client.get(script)).text
    missing = await client.get("/docs/assets/swagger-editor-bundle.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # No ReDoc page, which would load its script and fonts from CDNs.
    assert (await client.get("/redoc")).status_code == 404


async def test_docs_under_a_path_prefix_load_from_the_prefix(app_client: Any) -> None:
    app, _ = app_client
    transport = httpx.ASGITransport(app=app, root_path="/sms")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        page = (await http.get("/sms/docs")).text
    urls = _loaded_urls(page)
    assert "/sms/openapi.json" in urls
    assert all(u.startswith("/sms/") for u in urls), urls
