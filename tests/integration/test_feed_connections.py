"""run_feed's connections as the live view sees them, against the real simulator and the shared Redis: a refused
connect named in the stats snapshot (connections[].last_error) and in the log; `BOOKFEED_SYMBOLS=all` subscribing
every TRADING symbol of exchangeInfo over several connections; a symbol list that cannot be read logged as an
ERROR while the feed keeps running."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from feed.outage import PendingBatch
from feed.service import read_feed_stats, run_feed
from models.settings import Settings
from simulator import ServerConfig, SimConfig, SimulatorThread
from tests.services import wait_for

pytestmark = pytest.mark.integration


@contextmanager
def _feed(settings: Settings) -> Iterator[list[PendingBatch]]:
    """run_feed in a thread, its batches collected instead of sent; stopped on exit."""
    sent: list[PendingBatch] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=run_feed, args=(settings,), kwargs={"stop": stop, "send": sent.append, "install_signals": False}
    )
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def _stats(redis_url: str, prefix: str) -> dict[str, Any] | None:
    client = redis.Redis.from_url(redis_url)
    try:
        found = read_feed_stats(client, prefix)
    finally:
        client.close()
    return found[0] if found else None


def _prefix(broker_prefix: str) -> str:
    return f"{broker_prefix}conn-{uuid.uuid4().hex[:6]}:"


def test_a_refused_connect_is_named_in_the_stats_snapshot_and_the_log(
    redis_url: str, broker_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="feed")
    prefix = _prefix(broker_prefix)
    streams = [f"{s}@depth20@100ms" for s in ("btcusdt", "ethusdt", "bnbusdt")]  # a URI of 88 bytes
    with SimulatorThread(SimConfig(server=ServerConfig(max_uri_bytes=64))) as sim:
        settings = Settings(url=sim.url(streams), redis_url=redis_url, broker_key_prefix=prefix)

        def refused() -> bool:
            stats = _stats(redis_url, prefix)
            return stats is not None and "414" in str(stats["connections"][0]["last_error"])

        with _feed(settings):
            wait_for(refused, 30, "the 414 in the stats snapshot")
            stats = _stats(redis_url, prefix)
    assert stats is not None
    [conn] = stats["connections"]
    assert conn["state"] == "backoff" and conn["streams"] == 3 and conn["frames"] == 0 and conn["id"] == "1"
    assert conn["last_error"].startswith("connect failed: HTTP 414 Request-URI Too Long")
    assert isinstance(conn["since"], float) and stats["streams_subscribed"] == 0 and not stats["connected"]
    assert "connection 1 (3 streams): connect failed: HTTP 414 Request-URI Too Long" in caplog.text


def test_all_symbols_are_the_trading_ones_of_exchange_info_over_several_connections(
    redis_url: str, broker_prefix: str
) -> None:
    prefix = _prefix(broker_prefix)
    with SimulatorThread(SimConfig(random_symbols=30, not_trading=3, seed=5)) as sim:
        settings = Settings(
            url=f"ws://127.0.0.1:{sim.port}",
            rest_url=sim.http_url(),
            symbols=("all",),
            redis_url=redis_url,
            broker_key_prefix=prefix,
            streams_per_connection=10,
        )

        def all_flowing() -> bool:
            stats = _stats(redis_url, prefix)
            return stats is not None and len([s for s in stats["per_stream"] if s != "?"]) == 27

        with _feed(settings):
            wait_for(all_flowing, 60, "frames of the 27 TRADING symbols")
            stats = _stats(redis_url, prefix)
        served = sim.stats()
    assert stats is not None
    assert stats["streams_subscribed"] == 27
    assert sorted(c["streams"] for c in stats["connections"]) == [7, 10, 10]
    assert {c["state"] for c in stats["connections"]} == {"live"}
    assert set(stats["per_stream"]) == set(served["frames"])  # BREAK symbols are neither asked for nor served
    assert not any(served["violations"].values())


def test_a_symbol_list_that_cannot_be_read_is_an_error_and_the_feed_keeps_running(
    redis_url: str, broker_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="feed")
    prefix = _prefix(broker_prefix)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        url="ws://127.0.0.1:1",
        rest_url=f"http://127.0.0.1:{port}",
        symbols=("all",),
        redis_url=redis_url,
        broker_key_prefix=prefix,
    )
    with _feed(settings):
        wait_for(lambda: "could not read the symbol list" in caplog.text, 30, "the ERROR")
        wait_for(lambda: _stats(redis_url, prefix) is not None, 30, "stats written all the same")
    stats = _stats(redis_url, prefix)
    assert stats is not None and stats["connections"] == [] and stats["streams_subscribed"] == 0
    assert f"127.0.0.1:{port}" in stats["source_error"]  # what `bookfeed up`'s live view shows
    record = next(r for r in caplog.records if "could not read the symbol list" in r.getMessage())
    assert record.levelno == logging.ERROR and f"127.0.0.1:{port}" in record.getMessage()
