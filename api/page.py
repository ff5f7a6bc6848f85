"""The live page at `/` of the API: static HTML, JS and CSS shipped inside the package (no build step, no CDN).

Serves files only; the page itself reads `/v1/...` and `WS /v1/live` from the browser. Never queries the database.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Annotated, Final
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

__all__ = ["STATIC_FILES", "router"]

_STATIC: Final[Traversable] = files("api") / "static"

# Every file the page may load, by the name in its URL; anything else is a 404 (no path is ever joined from input).
STATIC_FILES: Final[dict[str, str]] = {
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
    "vendor/uplot-1.6.32.min.js": "text/javascript; charset=utf-8",
    "vendor/uplot-1.6.32.min.css": "text/css; charset=utf-8",
    "vendor/uplot-LICENSE.txt": "text/plain; charset=utf-8",
}
# The vendored files carry their version in their name, so a browser may keep them; the page's own files may change.
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_ASSET_URL = re.compile(rb'((?:src|href)="/static/[^"?]+)"')

router = APIRouter(include_in_schema=False)


def _read(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


@router.api_route("/", methods=["GET", "HEAD"])
def live_page(access_token: Annotated[str | None, Query()] = None) -> Response:
    """The live page: per symbol, price, spread and 30 s / 1 min averages, the current book's depth, gaps, health.
    Opened as `/?access_token=T` (an API with BOOKFEED_API_TOKEN), its own files are linked with that token too."""
    html = _read("live.html")
    if access_token:
        # quote() leaves only URL-safe characters, so the token cannot break out of the attribute.
        suffix = b"?access_token=" + quote(access_token, safe="").encode()
        html = _ASSET_URL.sub(lambda m: m.group(1) + suffix + b'"', html)
    return Response(html, media_type="text/html; charset=utf-8", headers={"Cache-Control": _REVALIDATE})


@router.api_route("/static/{name:path}", methods=["GET", "HEAD"])
def static_file(name: str) -> Response:
    """One of STATIC_FILES; 404 for any other name."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    cache = _IMMUTABLE if name.startswith("vendor/") else _REVALIDATE
    return Response(_read(name), media_type=media_type, headers={"Cache-Control": cache})
