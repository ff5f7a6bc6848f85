"""The live page's files (api/page.py, api/static/): served with their types, nothing else served, every file the
HTML links is served, the token carried to them, and every one of them shipped in the package (package-data).
The page in a browser is tests/e2e/test_live_page.py."""

from __future__ import annotations

import asyncio
import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.page import STATIC_FILES, router

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "api" / "static"


class _Client:
    """Requests straight into the ASGI app, no server (starlette's TestClient warns with this httpx)."""

    def __init__(self) -> None:
        self._app = FastAPI()
        self._app.include_router(router)

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self._app)
            async with httpx.AsyncClient(transport=transport, base_url="http://page") as c:
                return await c.get(path, params=params)

        return asyncio.run(go())


@pytest.fixture(scope="module")
def client() -> _Client:
    return _Client()


def test_the_page_is_html_linking_only_files_that_are_served(client: _Client) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    linked = re.findall(r'(?:src|href)="/static/([^"]+)"', r.text)
    assert {"live.js", "live.css", "vendor/uplot-1.6.32.min.js", "vendor/uplot-1.6.32.min.css"} <= set(linked)
    assert set(linked) <= set(STATIC_FILES)
    for name in linked:
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"] == STATIC_FILES[name]
        assert asset.content == (STATIC / name).read_bytes()


@pytest.mark.parametrize(
    "path", ["/static/../page.py", "/static/%2e%2e/page.py", "/static/live.html", "/static/vendor/", "/static/x.js"]
)
def test_nothing_but_the_listed_files_is_served(client: _Client, path: str) -> None:
    assert client.get(path).status_code == 404


def test_the_page_opened_with_a_token_links_its_files_with_it(client: _Client) -> None:
    html = client.get("/", params={"access_token": 'a b"<&'}).text
    linked = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert linked and all(url.endswith("?access_token=a%20b%22%3C%26") for url in linked)
    assert 'src="/static/live.js"' in client.get("/").text  # without a token, plain links


def test_the_vendored_chart_library_keeps_its_license() -> None:
    assert "MIT License" in (STATIC / "vendor" / "uplot-LICENSE.txt").read_text()
    assert (STATIC / "vendor" / "uplot-1.6.32.min.js").read_text().startswith("/*! https://github.com/leeoniya/uPlot")


def test_every_page_file_is_package_data() -> None:
    """A wheel without them would serve a 500 at `/`: pyproject's package-data must cover every file."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"].get("api", [])
    for name in ["live.html", *STATIC_FILES]:
        assert any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns), (name, patterns)
