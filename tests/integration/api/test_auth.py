"""BOOKFEED_API_TOKEN: when set, every HTTP request and websocket needs it (Bearer header or access_token)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from api.main import create_app
from tests.integration.api.conftest import serve, settings

pytestmark = pytest.mark.integration

TOKEN = "t0ken-with-enough-entropy"


@pytest.fixture(scope="module")
def base(recorded: Engine, reader: Engine, redis_url: str, broker_prefix: str) -> Iterator[str]:
    app = create_app(settings(redis_url, broker_prefix, api_token=TOKEN), engine=reader, symbols_ttl_s=0)
    with serve(app) as url:
        yield url


@pytest.mark.parametrize("path", ["/v1/symbols", "/v1/books/latest?symbol=BTCUSDT", "/openapi.json", "/docs", "/"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}]
)
def test_requests_without_the_token_are_refused(base: str, path: str, headers: dict[str, str]) -> None:
    resp = httpx.get(base + path, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["status"] == 401
    assert TOKEN not in resp.text


def test_requests_with_the_token_are_served(base: str) -> None:
    ok = httpx.get(base + "/v1/symbols", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert [s["symbol"] for s in ok.json()["items"]] == ["BTCUSDT", "ETHUSDT"]
    assert httpx.get(base + "/v1/symbols", params={"access_token": TOKEN}).status_code == 200
    assert httpx.get(base + "/openapi.json", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_websocket_needs_the_token(base: str) -> None:
    ws_base = base.replace("http://", "ws://")
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_base + "/v1/live", open_timeout=10).close()
    assert refused.value.response.status_code == 403
    with connect(ws_base + f"/v1/live?access_token={TOKEN}", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == '{"subscribed":"all"}'
    with connect(ws_base + "/v1/live", additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=10) as ws:
        assert ws.recv(timeout=10) == '{"subscribed":"all"}'


def test_no_token_set_means_open(api: httpx.Client) -> None:
    assert api.get("/v1/symbols").status_code == 200
