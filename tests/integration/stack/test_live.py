"""The live view of `bookfeed up` at scale: feed stats read from real Redis (as run_feed writes them) and the public
views of a real PostgreSQL. A connection that is not live is shown with its last error; 1,500 symbols cost two
queries per tick and show the busiest 20 lines plus a count."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, event

from feed.service import STATS_PREFIX
from models.messages import make_batch
from stack.live import MAX_SYMBOL_LINES, LiveView
from tests.integration._frames import simple_book
from workers.ingest import ingest_batch

pytestmark = pytest.mark.integration

ERROR_414 = "connect failed: HTTP 414 Request-URI Too Long; retry in 16 s"


@pytest.fixture
def prefix(broker_prefix: str) -> str:
    return broker_prefix + "live:"


@pytest.fixture
def client(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    for key in c.scan_iter(prefix + "*"):
        c.delete(key)
    c.close()


def publish_stats(client: redis.Redis, prefix: str, feed_id: str, **stats: Any) -> None:
    """A feed's stats snapshot, under the key and in the JSON run_feed writes (feed.service)."""
    client.set(prefix + STATS_PREFIX + feed_id, json.dumps({"feed_id": feed_id, "frames": 0, **stats}), ex=60)


def conn(cid: str, state: str, streams: int, error: str | None = None, ago_s: float = 0.0) -> dict[str, Any]:
    return {
        "id": cid,
        "state": state,
        "streams": streams,
        "last_error": error,
        "since": time.time() - ago_s,
        "frames": 0,
    }


def run_tick(clean_db: Engine, client: redis.Redis, prefix: str, ticks: int = 1) -> tuple[list[str], list[str]]:
    """The lines of the last of `ticks` ticks, and the SQL statements it ran."""
    lines: list[str] = []
    statements: list[str] = []
    view = LiveView(clean_db, client, prefix, lines.append)
    for _ in range(ticks):
        lines.clear()
        statements.clear()

        def record(*args: Any) -> None:
            statements.append(args[2])

        event.listen(clean_db, "before_cursor_execute", record)
        try:
            view.tick()
        finally:
            event.remove(clean_db, "before_cursor_execute", record)
    return lines, statements


def test_a_connection_that_is_not_live_is_shown_with_its_last_error(
    clean_db: Engine, client: redis.Redis, prefix: str
) -> None:
    publish_stats(
        client,
        prefix,
        "feed0",
        streams_subscribed=400,
        connections=[conn("0", "live", 200), conn("1", "live", 200), conn("3", "backoff", 600, ERROR_414, ago_s=12)],
    )
    lines, _ = run_tick(clean_db, client, prefix)
    text = "\n".join(lines)
    assert "feeds 1  streams 400 subscribed" in lines[0]
    assert "  connections 2 live, 1 backoff" in lines
    assert f"connection 3 backoff for 12 s (600 streams): {ERROR_414}" in text


def test_a_feed_that_cannot_read_its_symbol_list_says_why(clean_db: Engine, client: redis.Redis, prefix: str) -> None:
    error = "symbol list: GET https://api.binance.com/api/v3/exchangeInfo: HTTP 418 I'm a teapot"
    publish_stats(client, prefix, "feed123456", source_error=error, connections=[])
    lines, _ = run_tick(clean_db, client, prefix)
    assert f"  feed feed12: {error}" in lines


def test_connections_of_several_feeds_are_named_by_feed(clean_db: Engine, client: redis.Redis, prefix: str) -> None:
    publish_stats(client, prefix, "aaaaaa111", connections=[conn("0", "connecting", 5)])
    publish_stats(client, prefix, "bbbbbb222", connections=[conn("0", "live", 5)])
    lines, _ = run_tick(clean_db, client, prefix)
    assert "  connections 1 live, 1 connecting" in lines
    assert any(line.startswith("  connection aaaaaa/0 connecting for ") and "no error yet" in line for line in lines)


def test_an_older_feed_without_connections_is_tolerated(clean_db: Engine, client: redis.Redis, prefix: str) -> None:
    publish_stats(client, prefix, "old", per_stream={"btcusdt@depth20": 5, "?": 1})
    lines, _ = run_tick(clean_db, client, prefix)
    assert "feeds 1  0.0 frames/s  queue 0" in lines[0]
    assert not any("connections" in line for line in lines)
    assert lines[1].lstrip().startswith("BTCUSDT ")


def test_1500_symbols_cost_two_queries_and_show_the_busiest(clean_db: Engine, client: redis.Redis, prefix: str) -> None:
    symbols = [f"S{i:04d}USDT" for i in range(1500)]
    # One stored book for the busiest symbol: its price and spread are shown.
    ingest_batch(
        clean_db, make_batch(batch_id="live1", frames=[(time.time_ns(), simple_book(100, luid=1, symbol="s1499usdt"))])
    )
    per_stream = {f"{s.lower()}@depth20": i for i, s in enumerate(symbols)}
    publish_stats(client, prefix, "big", streams_subscribed=1500, per_stream=per_stream)
    lines, statements = run_tick(clean_db, client, prefix)
    assert len(statements) == 2, statements
    symbol_lines = [line for line in lines if "frames/s  price" in line]
    assert len(symbol_lines) == MAX_SYMBOL_LINES
    assert [line.split()[0] for line in symbol_lines] == symbols[::-1][:MAX_SYMBOL_LINES]  # busiest first
    assert symbol_lines[0].split()[4:7] == ["99.944444", "spread", "1.0000000"]  # price (the VWAP mid), spread
    assert symbol_lines[1].split()[4:7] == ["-", "spread", "-"]  # no book stored yet
    assert lines[-1] == f"  … {1500 - MAX_SYMBOL_LINES} more symbols"
