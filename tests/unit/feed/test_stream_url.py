"""feed.stream pure helpers: the combined-stream URL and `peek` (stream name and lastUpdateId by string search)."""

from __future__ import annotations

import orjson
import pytest

from feed.stream import build_url, peek
from models.errors import ConfigError
from models.vocabulary import Speed
from tests.factories import depth_samples, diff_depth_sample, make_frame

pytestmark = pytest.mark.unit

SYMBOLS = ("btcusdt", "ethusdt", "bnbusdt")
ALL3_100MS = "streams=btcusdt@depth20@100ms/ethusdt@depth20@100ms/bnbusdt@depth20@100ms"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://stream.binance.com:9443", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("wss://stream.binance.com:9443/", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("wss://stream.binance.com:9443/ws", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("wss://stream.binance.com:9443/ws/", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("ws://127.0.0.1:9000", f"ws://127.0.0.1:9000/stream?{ALL3_100MS}"),
        ("wss://proxy.example/binance/ws", f"wss://proxy.example/binance/stream?{ALL3_100MS}"),
    ],
    ids=["bare", "bare-slash", "ws", "ws-slash", "local", "prefixed-ws"],
)
def test_endpoint_gets_the_streams_of_the_symbols(url: str, expected: str) -> None:
    assert build_url(url, symbols=SYMBOLS, depth=20, speed="100ms") == expected


@pytest.mark.parametrize(
    ("depth", "speed", "streams"),
    [
        (20, "100ms", "btcusdt@depth20@100ms"),
        (20, "1000ms", "btcusdt@depth20"),  # 1000 ms is Binance's default: no suffix
        (10, "100ms", "btcusdt@depth10@100ms"),
        (5, "1000ms", "btcusdt@depth5"),
    ],
)
def test_depth_and_speed_suffixes(depth: int, speed: Speed, streams: str) -> None:
    url = build_url("wss://stream.binance.com:9443", symbols=("btcusdt",), depth=depth, speed=speed)
    assert url == f"wss://stream.binance.com:9443/stream?streams={streams}"


def test_symbols_are_lower_cased_in_stream_names() -> None:
    url = build_url("wss://h:9443", symbols=("BTCUSDT", "EthUsdt"), depth=5, speed="100ms")
    assert url == "wss://h:9443/stream?streams=btcusdt@depth5@100ms/ethusdt@depth5@100ms"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://h:9443/ws/btcusdt@depth20@100ms", "wss://h:9443/stream?streams=btcusdt@depth20@100ms"),
        ("wss://h:9443/ws/btcusdt@depth5/", "wss://h:9443/stream?streams=btcusdt@depth5"),
        ("ws://h/api/ws/ethusdt@depth10", "ws://h/api/stream?streams=ethusdt@depth10"),
    ],
)
def test_raw_stream_url_becomes_combined(url: str, expected: str) -> None:
    # The stream named in the URL wins over symbols/depth/speed.
    assert build_url(url, symbols=SYMBOLS, depth=20, speed="1000ms") == expected


@pytest.mark.parametrize(
    "url",
    [
        "wss://stream.binance.com:9443/stream?streams=btcusdt@depth20@100ms/ethusdt@depth5",
        "wss://stream.binance.com:9443/stream/?streams=btcusdt@depth20",
        "ws://127.0.0.1:9000/stream?streams=BTCUSDT@depth20&timeUnit=MICROSECOND",
    ],
)
def test_combined_url_is_kept_verbatim(url: str) -> None:
    assert build_url(url, symbols=SYMBOLS, depth=20, speed="100ms") == url


@pytest.mark.parametrize("url", ["wss://h/stream", "wss://h/stream?streams=", "wss://h/stream?other=1"])
def test_combined_url_without_streams(url: str) -> None:
    with pytest.raises(ConfigError, match=r"has no \?streams="):
        build_url(url, symbols=SYMBOLS, depth=20, speed="100ms")


@pytest.mark.parametrize(
    "url",
    [
        "https://stream.binance.com:9443",
        "http://stream.binance.com/ws",
        "stream.binance.com:9443",
        "wss://",
        "wss:///ws/btcusdt@depth20",
        "",
    ],
)
def test_not_a_websocket_url(url: str) -> None:
    with pytest.raises(ConfigError, match="not a websocket URL"):
        build_url(url, symbols=SYMBOLS, depth=20, speed="100ms")


# --- peek ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", depth_samples())
def test_peek_fixture_frames(raw: str) -> None:
    msg = orjson.loads(raw)
    assert peek(raw) == (msg["stream"], msg["data"]["lastUpdateId"])


def test_peek_built_frame() -> None:
    assert peek(make_frame("ethusdt", 5, speed=None, last_update_id=7)) == ("ethusdt@depth5", 7)


def test_peek_diff_depth_frame_has_no_last_update_id() -> None:
    assert peek(diff_depth_sample()) == ("btcusdt@depth@100ms", None)


@pytest.mark.parametrize(
    "raw",
    [
        '{"result":null,"id":1}',
        '{"e":"serverShutdown","E":1}',
        '{"lastUpdateId":1,"bids":[],"asks":[]}',  # a raw (non-combined) partial-depth payload
        '{ "stream": "btcusdt@depth5", "data": {"lastUpdateId": 1}}',  # not compact
        "",
        "ping",
        "[]",
    ],
)
def test_peek_non_combined_text(raw: str) -> None:
    assert peek(raw) == (None, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"stream":"btcusdt@depth5","data":{"bids":[],"asks":[]}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":"12","bids":[]}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":-1}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":null}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + "9" * 20 + "}}", ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + "9" * 19 + "}}", ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + str(2**63) + "}}", ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + str(2**63 - 1) + "}}", ("btcusdt@depth5", 2**63 - 1)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":0}}', ("btcusdt@depth5", 0)),
        ('{"stream":"btcusdt@depth5', (None, None)),
    ],
    ids=["missing", "string", "negative", "null", "20-digits", "19-nines", "2**63", "2**63-1", "zero", "truncated"],
)
def test_peek_without_a_usable_last_update_id(raw: str, expected: tuple[str | None, int | None]) -> None:
    assert peek(raw) == expected


def test_peek_superscript_digit_is_not_a_crash() -> None:
    assert peek('{"stream":"btcusdt@depth5","data":{"lastUpdateId":\u00b2}}') == ("btcusdt@depth5", None)


def test_peek_reads_ascii_digits_only() -> None:
    arabic_nines = "\u0669" * 19
    assert peek('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + arabic_nines + "}}") == ("btcusdt@depth5", None)


@pytest.mark.parametrize("cut", [30, 40, 45, 48])
def test_peek_truncated_frame_has_no_last_update_id(cut: int) -> None:
    # A frame cut inside its lastUpdateId must not read as a smaller (stale) id: the feed would drop it.
    raw = '{"stream":"btcusdt@depth20","data":{"lastUpdateId":6643542120,"bids":[],"asks":[]}}'
    _stream, luid = peek(raw[:cut])
    assert luid is None or luid == 6643542120
    assert peek(raw) == ("btcusdt@depth20", 6643542120)


def test_peek_caps_the_stream_name_at_100_characters() -> None:
    name = "a" * 100
    assert peek('{"stream":"' + name + '","data":{"lastUpdateId":1}}') == (name, 1)
    assert peek('{"stream":"' + name + 'b","data":{"lastUpdateId":1}}') == (None, None)
    assert peek('{"stream":"' + "a" * (1 << 20) + '","data":{"lastUpdateId":1}}') == (None, None)
