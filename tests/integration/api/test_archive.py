"""Issue 11's done-when through the HTTP API: days archived, verified and dropped from PostgreSQL by retention are
still served by /v1/symbols, /v1/books, /v1/books/at and /v1/books/latest, answer for answer as before the drop
(a real uvicorn, the reader role). Retention drops partitions, so this module works in a database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from api.main import create_app, make_engine
from models.coldstore import book_path
from models.messages import make_batch
from stack.embedded import Servers
from tests.integration._frames import frame
from tests.integration.api.conftest import serve, settings
from workers.archive import archive_closed_days
from workers.ingest import ingest_batch
from workers.retention import apply_retention
from workers.schema import upgrade_to_head

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
OLDER_DAY, OLD_DAY, HOT_DAY = ((NOW - timedelta(days=k)).date() for k in (6, 5, 1))
START, END = datetime.combine(OLDER_DAY, datetime.min.time(), UTC), NOW
LIMIT = 7  # small pages: a page boundary falls inside every day, and across the hot/cold border


def _ns(day: date, second: int, micro: int = 0) -> int:
    t = datetime.combine(day, datetime.min.time(), UTC) + timedelta(seconds=second, microseconds=micro)
    return int(t.timestamp()) * 10**9 + t.microsecond * 1000


def _frames() -> list[tuple[int, str]]:
    """BTCUSDT on all three days (two books sharing a received_at on each), ETHUSDT on the two old days only and
    SOLUSDT on OLD_DAY only: once those days are dropped, only the archive knows ETHUSDT and SOLUSDT."""
    out: list[tuple[int, str]] = []
    for k, day in enumerate((OLDER_DAY, OLD_DAY, HOT_DAY)):
        for i in range(12):
            bids = [(f"{40000 + i}.98000000", "0.00000001"), (f"{40000 + i}.50000000", "12.00000000")]
            asks = [(f"{40000 + i}.99000000", "1.32492400")]
            t = _ns(day, 3600 + (i - 1 if i == 5 else i) * 60, 17)  # books 4 and 5 share a received_at
            out.append((t, frame("btcusdt", luid=1000 * k + i, bids=bids, asks=asks)))
        if day != HOT_DAY:
            out += [(_ns(day, 7200 + i, 5), frame("ethusdt", luid=50 * k + i, bids=[("2000.5", "0.1234")],
                                                 asks=[("2000.75", "3")])) for i in range(4)]  # fmt: skip
    out.append((_ns(OLD_DAY, 9000), frame("solusdt", luid=9, bids=[("0.00000002", "100")], asks=[("100.0", "0.10")])))
    return out


@pytest.fixture(scope="module")
def owner(services: Servers) -> Iterator[Engine]:
    url = services.create_database(prefix="bookfeed_api_archive")
    upgrade_to_head(url)
    engine = create_engine(url, poolclass=NullPool)
    frames = _frames()
    result = ingest_batch(engine, make_batch(batch_id="api-archive", frames=frames))
    assert (result.n_books, result.n_rejected) == (len(frames), 0)
    yield engine
    engine.dispose()
    services.drop_database(url)


@pytest.fixture(scope="module")
def reader(owner: Engine) -> Iterator[Engine]:
    eng = make_engine(owner.url.render_as_string(hide_password=False))

    @event.listens_for(eng, "connect")
    def _as_reader(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET ROLE bookfeed_reader")

    yield eng
    eng.dispose()


def _client(reader: Engine, redis_url: str, prefix: str, archive: Path | None) -> Any:
    s = settings(
        redis_url,
        prefix,
        api_max_limit=50,
        api_max_range_s=10 * 86_400,
        archive_url=str(archive) if archive else None,
    )
    return serve(create_app(s, engine=reader, symbols_ttl_s=0))


def _ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()


def _pages(api: httpx.Client, symbol: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        q: dict[str, Any] = {"symbol": symbol, "start": START.isoformat(), "end": END.isoformat(), "limit": LIMIT}
        if cursor:
            q["cursor"] = cursor
        page = _ok(api.get("/v1/books", params=q))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _instants() -> list[tuple[str, str]]:
    """(symbol, t): just at a book, between two books, between days, after everything, before anything."""
    at = [
        ("BTCUSDT", datetime.combine(OLD_DAY, datetime.min.time(), UTC) + timedelta(seconds=3600 + 4 * 60)),
        ("BTCUSDT", datetime.combine(OLD_DAY, datetime.min.time(), UTC) + timedelta(seconds=3600 + 90)),
        ("BTCUSDT", datetime.combine(HOT_DAY, datetime.min.time(), UTC) + timedelta(seconds=60)),  # OLD_DAY's last
        ("BTCUSDT", datetime.combine(HOT_DAY, datetime.min.time(), UTC) + timedelta(seconds=4000)),
        ("ETHUSDT", datetime.combine(OLD_DAY, datetime.min.time(), UTC) + timedelta(seconds=7201, microseconds=5)),
        ("ETHUSDT", NOW),  # its newest book is archived
        ("SOLUSDT", NOW),
        ("SOLUSDT", datetime.combine(OLDER_DAY, datetime.min.time(), UTC)),  # before any: 404
    ]
    return [(s, t.isoformat()) for s, t in at]


def _snapshot(api: httpx.Client) -> dict[str, Any]:
    symbols = _ok(api.get("/v1/symbols"))["items"]
    names = [s["symbol"] for s in symbols]
    at = []
    for symbol, t in _instants():
        resp = api.get("/v1/books/at", params={"symbol": symbol, "t": t})
        at.append((resp.status_code, resp.json()))
    return {
        "symbols": symbols,
        "books": {s: _pages(api, s) for s in names},
        "at": at,
        "latest": {s: _ok(api.get("/v1/books/latest", params={"symbol": s})) for s in names},
    }


def _day_count(engine: Engine, day: date) -> int:
    lo = datetime.combine(day, datetime.min.time(), UTC)
    with engine.connect() as conn:
        sql = text("SELECT count(*) FROM order_books WHERE received_at >= :a AND received_at < :b")
        return int(conn.execute(sql, {"a": lo, "b": lo + timedelta(days=1)}).scalar_one())


def test_days_archived_and_dropped_are_still_served_by_the_api(
    owner: Engine, reader: Engine, redis_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    with _client(reader, redis_url, broker_prefix, archive) as base, httpx.Client(base_url=base, timeout=30) as api:
        before = _snapshot(api)
        assert [s["symbol"] for s in before["symbols"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
        assert [s["books"] for s in before["symbols"]] == [36, 8, 1]
        assert [code for code, _ in before["at"]] == [200] * 7 + [404]
        assert before["at"][2][1]["received_at"].startswith(OLD_DAY.isoformat())  # the book in force overnight

        assert {OLDER_DAY, OLD_DAY, HOT_DAY} <= set(archive_closed_days(owner, str(archive), now=NOW).archived)
        dropped = apply_retention(owner, retention_days=3, archive_url=str(archive), now=NOW)
        assert set(dropped.dropped) == {OLDER_DAY, OLD_DAY} and not dropped.refused
        assert _day_count(owner, OLDER_DAY) == _day_count(owner, OLD_DAY) == 0 < _day_count(owner, HOT_DAY)

        after = _snapshot(api)
    assert after == before

    # Without the archive the API knows only what PostgreSQL still holds: the test above read the archive.
    with _client(reader, redis_url, broker_prefix, None) as base, httpx.Client(base_url=base, timeout=30) as api:
        hot = _ok(api.get("/v1/symbols"))["items"]
        assert [s["symbol"] for s in hot] == ["BTCUSDT"] and hot[0]["books"] == 12
        assert api.get("/v1/books/latest", params={"symbol": "SOLUSDT"}).status_code == 404

    # A very late book recreates OLDER_DAY's partition: PostgreSQL's newest book before HOT_DAY is now that one, yet
    # the book in force overnight is still OLD_DAY's last, in the archive.
    late = frame("btcusdt", luid=99, bids=[("1.00", "1.00")], asks=[("2.00", "1.00")])
    ingest_batch(owner, make_batch(batch_id="very-late", frames=[(_ns(OLDER_DAY, 80_000), late)]))
    with _client(reader, redis_url, broker_prefix, archive) as base, httpx.Client(base_url=base, timeout=30) as api:
        symbol, t = _instants()[2]
        assert _ok(api.get("/v1/books/at", params={"symbol": symbol, "t": t})) == before["at"][2][1]

    # An archive that cannot be read is a 503 problem, not a 500.
    (archive / book_path(OLD_DAY, "BTCUSDT")).write_bytes(b"not parquet")
    with _client(reader, redis_url, broker_prefix, archive) as base, httpx.Client(base_url=base, timeout=30) as api:
        resp = api.get("/v1/books/at", params={"symbol": symbol, "t": t})
    assert resp.status_code == 503 and resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["title"] == "Archive unavailable"
