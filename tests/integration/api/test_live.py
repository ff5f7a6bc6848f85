"""WS /v1/live: a stored book's metrics reach a websocket client after its batch is committed, filtered by symbol."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import Engine
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from api.main import create_app
from models.book import parse_frame
from models.messages import make_batch
from models.metrics import book_metrics
from tests.integration.api.conftest import NS, Sent, _raw, serve, settings
from workers import live
from workers.ingest import ingest_batch
from workers.live import LivePublisher

pytestmark = pytest.mark.integration

T_LIVE = 1_794_000_000 * NS + 987_654_321  # 2026-11-11, a day of its own


@pytest.fixture(scope="module")
def ws_base(recorded: Engine, reader: Engine, redis_url: str, broker_prefix: str) -> Iterator[str]:
    app = create_app(settings(redis_url, broker_prefix), engine=reader, symbols_ttl_s=0)
    with serve(app) as url:
        yield url.replace("http://", "ws://")


@pytest.fixture
def publisher(redis_url: str, broker_prefix: str) -> Iterator[LivePublisher]:
    pub = LivePublisher(redis.Redis.from_url(redis_url), key_prefix=broker_prefix)
    yield pub
    pub.close()


def _store_and_publish(engine: Engine, publisher: LivePublisher, books: list[Sent], batch_id: str) -> int:
    """What a worker does for one batch: commit it, then push its books."""
    frames = [(b.received_ns, _raw(b)) for b in books]
    result = ingest_batch(engine, make_batch(batch_id=batch_id, frames=frames))
    assert result.n_books == len(books)
    parsed = [parse_frame(raw, received_ns=ns) for ns, raw in frames]
    return publisher.publish("binance", [(b, book_metrics(b)) for b in parsed])


def _recv(ws: ClientConnection) -> Any:
    return orjson.loads(ws.recv(timeout=20))


def test_a_stored_book_is_pushed_to_the_subscribers_of_its_symbol(
    ws_base: str, recorded: Engine, publisher: LivePublisher
) -> None:
    btc = Sent("BTCUSDT", T_LIVE, 42, [["40100.10000000", "0.50000000"]], [["40100.20000000", "0.25000000"]])
    eth = Sent("ETHUSDT", T_LIVE + 1000, 43, [["2000.5", "1"]], [["2001", "2"]])
    later = Sent("BTCUSDT", T_LIVE + NS, 44, [["40100.00000000", "1.00000000"]], [["40100.00000001", "1.00000000"]])
    with connect(ws_base + "/v1/live?symbols=btcusdt", open_timeout=10) as ws:
        assert _recv(ws) == {"subscribed": ["BTCUSDT"]}
        assert _store_and_publish(recorded, publisher, [eth, btc], "live-1") >= 1
        _store_and_publish(recorded, publisher, [later], "live-2")
        first, second = _recv(ws), _recv(ws)  # the ETHUSDT book is not sent to a BTCUSDT subscriber
    m = book_metrics(parse_frame(_raw(btc), received_ns=btc.received_ns))
    assert first == {
        "exchange": "binance",
        "symbol": "BTCUSDT",
        "received_at": btc.received_at,
        "last_update_id": 42,
        "depth": 20,
        "best_bid": "40100.10000000",
        "best_ask": "40100.20000000",
        "spread": "0.10000000",
        "bid_vwap": m.bid_vwap,
        "ask_vwap": m.ask_vwap,
        "price": m.price,
        "crossed": False,
    }
    assert (second["last_update_id"], second["spread"]) == (44, "0.00000001")  # exact, not 1E-8


def test_every_symbol_without_a_filter(ws_base: str, recorded: Engine, publisher: LivePublisher) -> None:
    eth = Sent("ETHUSDT", T_LIVE + 5 * NS, 50, [["2000.5", "1"]], [["2001", "2"]])
    with connect(ws_base + "/v1/live", open_timeout=10) as ws:
        assert _recv(ws) == {"subscribed": "all"}
        _store_and_publish(recorded, publisher, [eth], "live-3")
        assert _recv(ws)["symbol"] == "ETHUSDT"


def test_a_bad_symbol_closes_with_a_reason(ws_base: str) -> None:
    with connect(ws_base + "/v1/live?symbols=BTCUSDT,no!", open_timeout=10) as ws:
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=10)
        assert ws.close_code == 1008
        assert "symbol" in (ws.close_reason or "")
    assert "1008" in str(closed.value)


def test_a_failed_publish_is_logged_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    from stack.harness import free_port

    pub = LivePublisher.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    book = parse_frame(_raw(Sent("BTCUSDT", T_LIVE, 1, [["1.0", "1"]], [["2.0", "1"]])), received_ns=T_LIVE)
    with caplog.at_level("WARNING", logger="workers.live"):
        assert pub.publish("binance", [(book, book_metrics(book))]) == 0
    pub.close()
    assert "live push of 1 book(s) failed" in caplog.text


def test_publish_stored_pushes_only_once_installed(redis_url: str, broker_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(broker_prefix + "bookfeed:live")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    book = parse_frame(_raw(Sent("BTCUSDT", T_LIVE, 2, [["1.0", "1"]], [["2.0", "1"]])), received_ns=T_LIVE)
    live.publish_stored("binance", [(book, book_metrics(book))])  # no publisher in this process: nothing
    assert pubsub.get_message(timeout=0.5) is None
    live.install(LivePublisher.from_url(redis_url, key_prefix=broker_prefix))
    try:
        live.publish_stored("binance", [(book, book_metrics(book))])
        message = pubsub.get_message(timeout=5)
    finally:
        live.install(None)
        pubsub.close()
        client.close()
    assert message is not None
    assert [i["last_update_id"] for i in orjson.loads(message["data"])] == [2]


def test_a_batch_stored_by_a_real_worker_is_pushed(
    ws_base: str, redis_url: str, broker_prefix: str, worker: Any
) -> None:
    """The whole path: the feed's sender -> Redis -> a `celery worker` process commits and publishes -> the API ->
    the websocket client."""
    from feed.broker import make_celery_sender
    from feed.outage import PendingBatch

    book = Sent("BNBUSDT", T_LIVE + 30 * NS, 77, [["300.1000", "2.000"]], [["300.2000", "1.000"]])
    send = make_celery_sender(redis_url, key_prefix=broker_prefix)
    with connect(ws_base + "/v1/live?symbols=BNBUSDT", open_timeout=10) as ws:
        assert _recv(ws) == {"subscribed": ["BNBUSDT"]}
        send(PendingBatch(make_batch(batch_id="live-worker", frames=[(book.received_ns, _raw(book))])))
        item = _recv(ws)
    assert (item["symbol"], item["last_update_id"], item["received_at"]) == ("BNBUSDT", 77, book.received_at)
    assert (item["best_bid"], item["best_ask"], item["spread"]) == ("300.1000", "300.2000", "0.1000")


def test_nothing_is_built_while_nobody_listens(
    publisher: LivePublisher, recorded: Engine, monkeypatch: pytest.MonkeyPatch, ws_base: str
) -> None:
    """Building the items costs more than parsing the batch: with no subscriber the publisher skips it."""
    from workers import live as live_module

    def refuse(*_: Any) -> Any:
        raise AssertionError("items built with nobody listening")

    book = parse_frame(_raw(Sent("BTCUSDT", T_LIVE, 7, [["1.0", "1"]], [["2.0", "1"]])), received_ns=T_LIVE)
    with monkeypatch.context() as patched:
        patched.setattr(live_module, "live_item", refuse)
        assert publisher.publish("binance", [(book, book_metrics(book))]) == 0
    with connect(ws_base + "/v1/live", open_timeout=10) as ws:
        assert _recv(ws) == {"subscribed": "all"}
        assert publisher.publish("binance", [(book, book_metrics(book))]) == 1
        assert _recv(ws)["last_update_id"] == 7
