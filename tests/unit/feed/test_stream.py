"""feed.stream: which endpoint and streams a URL means (a full URL kept with its streams, a bare endpoint subscribed
by message), and StreamClient's run: stopping reports "feed stopped" gaps, stream lists change only at a bare
endpoint, and retries exhausted end the run."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from feed.stream import Endpoint, StreamClient, parse_endpoint
from models.errors import ConfigError, RetriesExhaustedError
from models.settings import ReconnectPolicy

pytestmark = pytest.mark.unit

ALL3 = "btcusdt@depth20@100ms/ethusdt@depth20@100ms/bnbusdt@depth20@100ms"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://stream.binance.com:9443", "wss://stream.binance.com:9443/stream"),
        ("wss://stream.binance.com:9443/", "wss://stream.binance.com:9443/stream"),
        ("wss://stream.binance.com:9443/ws", "wss://stream.binance.com:9443/stream"),
        ("wss://stream.binance.com:9443/ws/", "wss://stream.binance.com:9443/stream"),
        ("wss://stream.binance.com:9443/stream", "wss://stream.binance.com:9443/stream"),
        ("ws://127.0.0.1:9000", "ws://127.0.0.1:9000/stream"),
        ("wss://proxy.example/binance/ws", "wss://proxy.example/binance/stream"),
    ],
    ids=["bare", "bare-slash", "ws", "ws-slash", "stream", "local", "prefixed-ws"],
)
def test_a_bare_endpoint_is_subscribed_by_message(url: str, expected: str) -> None:
    assert parse_endpoint(url) == Endpoint(expected, None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://h:9443/ws/btcusdt@depth20@100ms", "wss://h:9443/stream?streams=btcusdt@depth20@100ms"),
        ("wss://h:9443/ws/btcusdt@depth5/", "wss://h:9443/stream?streams=btcusdt@depth5"),
        ("ws://h/api/ws/ethusdt@depth10", "ws://h/api/stream?streams=ethusdt@depth10"),
    ],
)
def test_raw_stream_url_becomes_combined_with_its_one_stream(url: str, expected: str) -> None:
    endpoint = parse_endpoint(url)
    assert endpoint.url == expected
    assert endpoint.streams == (expected.rsplit("=", 1)[1],)


@pytest.mark.parametrize(
    "url",
    [
        f"wss://stream.binance.com:9443/stream?streams={ALL3}",
        "wss://stream.binance.com:9443/stream/?streams=btcusdt@depth20",
        "ws://127.0.0.1:9000/stream?streams=btcusdt@depth20&timeUnit=MICROSECOND",
    ],
)
def test_combined_url_is_kept_verbatim_with_its_streams(url: str) -> None:
    endpoint = parse_endpoint(url)
    assert endpoint.url == url
    assert endpoint.streams is not None and endpoint.streams[0] == "btcusdt@depth20" + ("@100ms" if ALL3 in url else "")


def test_combined_url_with_an_empty_stream_list() -> None:
    with pytest.raises(ConfigError, match=r"empty \?streams="):
        parse_endpoint("wss://h/stream?streams=")


@pytest.mark.parametrize(
    "url",
    ["https://stream.binance.com:9443", "http://stream.binance.com/ws", "stream.binance.com:9443", "wss://", ""],
)
def test_not_a_websocket_url(url: str) -> None:
    with pytest.raises(ConfigError, match="not a websocket URL"):
        parse_endpoint(url)


# --- StreamClient.run ------------------------------------------------------------------------------------------------


def _frame(luid: int, stream: str = "btcusdt@depth20") -> str:
    return f'{{"stream":"{stream}","data":{{"lastUpdateId":{luid},"bids":[],"asks":[]}}}}'


def test_a_fixed_url_cannot_change_its_streams() -> None:
    client = StreamClient("ws://127.0.0.1:1/stream?streams=btcusdt@depth20", on_frame=lambda ns, raw: None)
    assert client.fixed
    with pytest.raises(ConfigError, match="names its streams"):
        client.set_streams(["ethusdt@depth20"])


def test_run_ends_with_a_feed_stopped_gap_per_stream_that_had_frames() -> None:
    gaps: list[tuple[str, int, int, str]] = []
    client = StreamClient("ws://127.0.0.1:1", on_frame=lambda ns, raw: None, on_gap=lambda *g: gaps.append(g))
    client.set_streams(["btcusdt@depth20", "ethusdt@depth20"])
    client.tracker.handle(5, _frame(1))
    del gaps[:]
    stop = threading.Event()
    stop.set()
    client.run(stop)
    [(stream, seen, end, reason)] = gaps  # ethusdt had no frame: nothing to stop
    assert (stream, seen, reason) == ("btcusdt@depth20", 5, "feed stopped")
    assert client.stopped == {"btcusdt@depth20": end}
    assert client.pool.statuses() == [] or all(s.state == "closed" for s in client.pool.statuses())


def test_retries_exhausted_end_the_run() -> None:
    policy = replace(ReconnectPolicy.default(), max_reconnect_attempts=2, backoff_base_s=0.01)
    client = StreamClient("ws://127.0.0.1:1", on_frame=lambda ns, raw: None, policy=policy)
    client.set_streams(["btcusdt@depth20"])
    with pytest.raises(RetriesExhaustedError, match=r"connection 1 .*could not connect"):
        client.run(threading.Event())
