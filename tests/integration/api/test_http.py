"""The /v1 HTTP endpoints on real PostgreSQL with recorded books, through the reader role: every endpoint, exact
decimals, keyset pagination with neither loss nor duplication, problem+json bodies for bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from httpx import Client

from models.book import parse_frame
from models.metrics import book_metrics
from tests.integration.api.conftest import BTC, ETH, GAP, JUNK_NS, N_BTC, NS, T0_S, TIE, Sent, _raw

pytestmark = pytest.mark.integration

DAY = "2026-11-01T00:00:00Z"
NEXT_DAY = "2026-11-02T00:00:00Z"


def _ok(resp: Any) -> Any:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return resp.json()


def test_symbols_lists_first_last_and_count(api: Client) -> None:
    items = _ok(api.get("/v1/symbols"))["items"]
    assert items == [
        {"symbol": "BTCUSDT", "first": BTC[0].received_at, "last": BTC[-1].received_at, "books": N_BTC},
        {"symbol": "ETHUSDT", "first": ETH[0].received_at, "last": ETH[-1].received_at, "books": len(ETH)},
    ]


def test_latest_book_is_the_newest_with_exact_strings(api: Client) -> None:
    assert _ok(api.get("/v1/books/latest", params={"symbol": "btcusdt"})) == BTC[-1].as_json()
    eth = _ok(api.get("/v1/books/latest", params={"symbol": "ETHUSDT"}))
    assert eth == ETH[-1].as_json()
    assert eth["bids"] == [["2000.5", "0.1234"]]  # not 2000.50000000, not a float


def test_book_at_an_instant_is_the_last_received_at_or_before_it(api: Client) -> None:
    just_after = BTC[10].received_at.replace("Z", "") + "+00:00"  # any RFC 3339 offset
    assert _ok(api.get("/v1/books/at", params={"symbol": "BTCUSDT", "t": just_after})) == BTC[10].as_json()
    between = "2026-11-01T00:00:10.900000+01:00"  # 1 h earlier than 00:00:10.9Z: before any book
    resp = api.get("/v1/books/at", params={"symbol": "BTCUSDT", "t": between})
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    assert (
        _ok(api.get("/v1/books/at", params={"symbol": "BTCUSDT", "t": "2026-11-01T00:00:10.9Z"})) == BTC[10].as_json()
    )


def _all_pages(api: Client, limit: int, **params: str) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        q = {"symbol": "BTCUSDT", "start": DAY, "end": NEXT_DAY, "limit": limit, **params}
        if cursor:
            q["cursor"] = cursor
        page = _ok(api.get("/v1/books", params=q))
        pages += 1
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages
        assert len(page["items"]) == limit  # only the last page is short


@pytest.mark.parametrize("limit", [7, 50, 1])
def test_pages_cover_the_range_once_in_order(api: Client, limit: int) -> None:
    items, pages = _all_pages(api, limit)
    expected = sorted(BTC, key=lambda b: (b.received_ns // 1000, b.last_update_id))
    assert items == [b.as_json() for b in expected]  # no loss, no duplicate, exact values
    assert pages == -(-N_BTC // limit)  # a full last page already says next_cursor: null
    assert BTC[TIE].received_at == BTC[TIE + 1].received_at


def test_books_range_is_half_open(api: Client) -> None:
    q = {"symbol": "BTCUSDT", "start": BTC[20].received_at, "end": BTC[30].received_at, "limit": 50}
    page = _ok(api.get("/v1/books", params=q))
    assert [b["last_update_id"] for b in page["items"]] == [b.last_update_id for b in BTC[20:30]]
    assert page["next_cursor"] is None


def test_books_response_is_streamed(api: Client) -> None:
    resp = api.get("/v1/books", params={"symbol": "BTCUSDT", "start": DAY, "end": NEXT_DAY, "limit": 50})
    assert resp.status_code == 200
    assert "content-length" not in resp.headers  # written while rows arrive (chunked), not built whole


def _metrics(s: Sent) -> Any:
    return book_metrics(parse_frame(_raw(s), received_ns=s.received_ns))


def test_metrics_exact_spread_and_float_price(api: Client) -> None:
    q = {"symbol": "BTCUSDT", "start": BTC[0].received_at, "end": BTC[3].received_at}
    body = _ok(api.get("/v1/metrics", params=q))
    assert body["symbol"] == "BTCUSDT"
    assert len(body["items"]) == 3
    for item, sent in zip(body["items"], BTC[:3], strict=True):
        m = _metrics(sent)
        assert item["received_at"] == sent.received_at
        assert item["last_update_id"] == sent.last_update_id
        assert (item["best_bid"], item["best_ask"]) == (sent.bids[0][0], sent.asks[0][0])
        assert item["spread"] == "0.01000000"
        assert (item["bid_vwap"], item["ask_vwap"], item["price"]) == (m.bid_vwap, m.ask_vwap, m.price)
        assert item["crossed"] is False and item["depth"] == 20


@pytest.mark.parametrize("window", [30, 60])
def test_averages_with_complete(api: Client, window: int) -> None:
    body = _ok(api.get("/v1/averages", params={"symbol": "BTCUSDT", "window": window, "start": DAY, "end": NEXT_DAY}))
    assert body["symbol"] == "BTCUSDT" and body["window"] == window
    items = body["items"]
    assert items, "the fixture computed averages"
    first = items[0]
    assert first["window_start"] == "2026-11-01T00:00:00.000000Z"
    assert (
        first["window_end"] == f"2026-11-01T00:00:{window:02d}.000000Z"
        if window < 60
        else "2026-11-01T00:01:00.000000Z"
    )
    assert first["complete"] is False  # the recorded gap (00:00:10-00:00:20) falls in it
    in_first = [b for b in BTC if b.received_ns < (T0_S + window) * NS]
    assert first["samples"] == len(in_first)
    assert first["avg_price"] == pytest.approx(sum(_metrics(b).price for b in in_first) / len(in_first), rel=1e-12)
    assert any(i["complete"] for i in items)


def test_gaps_overlapping_the_range(api: Client) -> None:
    body = _ok(api.get("/v1/gaps", params={"start": DAY, "end": NEXT_DAY}))
    assert body["items"] == [
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "stream": GAP[0],
            "start_at": "2026-11-01T00:00:10.000000Z",
            "end_at": "2026-11-01T00:00:20.000000Z",
            "reason": "stalled",
        }
    ]
    assert _ok(api.get("/v1/gaps", params={"symbol": "ETHUSDT", "start": DAY, "end": NEXT_DAY}))["items"] == []
    after = {"start": "2026-11-01T00:00:21Z", "end": NEXT_DAY}
    assert _ok(api.get("/v1/gaps", params=after))["items"] == []


def test_rejected_since(api: Client) -> None:
    items = _ok(api.get("/v1/rejected", params={"since": DAY}))["items"]
    assert [(i["raw"], i["exchange"], i["batch_id"]) for i in items] == [("junk", "binance", "api-eth")]
    assert items[0]["received_at"] == Sent("X", JUNK_NS, 0, [], []).received_at
    assert items[0]["reason"]
    assert _ok(api.get("/v1/rejected", params={"since": "2026-11-01T00:00:06Z"}))["items"] == []


@pytest.mark.parametrize(
    ("path", "params", "status", "in_detail"),
    [
        ("/v1/books/latest", {"symbol": "DOGEUSDT"}, 404, "DOGEUSDT"),
        ("/v1/books/latest", {"symbol": "no such!"}, 400, "symbol"),
        ("/v1/books/latest", {}, 400, "symbol"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": NEXT_DAY, "end": DAY}, 400, "before end"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": DAY, "end": "2026-11-05T00:00:00Z"}, 400, "maximum"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": DAY, "end": NEXT_DAY, "limit": 51}, 400, "limit"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": DAY, "end": NEXT_DAY, "limit": 0}, 400, "limit"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": DAY, "end": NEXT_DAY, "cursor": "bm9wZQ"}, 400, "cursor"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": "2026-11-01T00:00:00", "end": NEXT_DAY}, 400, "RFC 3339"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": "2026-11-01", "end": NEXT_DAY}, 400, "RFC 3339"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": "2026-13-01T00:00:00Z", "end": NEXT_DAY}, 400, "start"),
        ("/v1/books", {"symbol": "BTCUSDT", "start": DAY, "end": NEXT_DAY, "limit": "ten"}, 400, "limit"),
        ("/v1/books/at", {"symbol": "BTCUSDT", "t": "yesterday"}, 400, "RFC 3339"),
        ("/v1/metrics", {"symbol": "ETHUSDT", "start": DAY, "end": DAY}, 400, "before end"),
        ("/v1/averages", {"symbol": "BTCUSDT", "window": 45, "start": DAY, "end": NEXT_DAY}, 400, "30, 60"),
        ("/v1/averages", {"symbol": "XRPUSDT", "window": 30, "start": DAY, "end": NEXT_DAY}, 404, "XRPUSDT"),
        ("/v1/gaps", {"start": DAY, "end": "2026-11-30T00:00:00Z"}, 400, "maximum"),
        ("/v1/rejected", {"since": DAY, "limit": 1000}, 400, "limit"),
        ("/v1/rejected", {}, 400, "since"),
        ("/v1/nothing", {}, 404, ""),
    ],
)
def test_bad_input_answers_a_problem(
    api: Client, path: str, params: dict[str, Any], status: int, in_detail: str
) -> None:
    resp = api.get(path, params=params)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["title"]
    assert in_detail in body["detail"]


def test_openapi_and_docs(api: Client) -> None:
    spec = _ok(api.get("/openapi.json"))
    paths = set(spec["paths"])
    assert {
        "/v1/symbols",
        "/v1/books",
        "/v1/books/latest",
        "/v1/books/at",
        "/v1/metrics",
        "/v1/averages",
        "/v1/gaps",
        "/v1/rejected",
    } <= paths
    books = spec["paths"]["/v1/books"]["get"]
    assert "application/problem+json" in books["responses"]["400"]["content"]
    assert "next_cursor" in spec["components"]["schemas"]["BooksPage"]["properties"]
    assert api.get("/docs").status_code == 200


def test_database_down_answers_503_problem(redis_url: str, broker_prefix: str) -> None:
    from api.main import create_app, make_engine
    from stack.harness import free_port
    from tests.integration.api.conftest import serve, settings

    engine = make_engine(f"postgresql://nobody:secret@127.0.0.1:{free_port()}/nothing")  # nothing listens there
    with serve(create_app(settings(redis_url, broker_prefix), engine=engine)) as base:
        resp = httpx.get(base + "/v1/books/latest", params={"symbol": "BTCUSDT"}, timeout=30)
    engine.dispose()
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    assert "secret" not in resp.text and "nobody" not in resp.text
