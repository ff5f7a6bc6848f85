"""Stream names and websocket paths."""

from __future__ import annotations

import pytest

from feed.sim import DepthStream, parse_stream, parse_ws_path
from feed.sim._streams import WsPath

pytestmark = pytest.mark.unit

SYMBOLS = {"BTCUSDT", "ETHUSDT"}


@pytest.mark.parametrize(
    ("name", "levels", "interval_ms"),
    [
        ("btcusdt@depth5", 5, 1000),
        ("btcusdt@depth10@100ms", 10, 100),
        ("ethusdt@depth20@1000ms", 20, 1000),
    ],
)
def test_depth_streams(name: str, levels: int, interval_ms: int) -> None:
    stream = parse_stream(name, SYMBOLS)
    assert stream == DepthStream(name, name.split("@")[0].upper(), levels, interval_ms)


@pytest.mark.parametrize(
    "name",
    [
        "xrpusdt@depth20",
        "btcusdt@depth",
        "btcusdt@depth15",
        "btcusdt@trade",
        "BTCUSDT@depth20",
        "btcusdt@depth20@250ms",
    ],
)
def test_streams_nobody_publishes(name: str) -> None:
    assert parse_stream(name, SYMBOLS) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/stream?streams=a@depth5/b@depth20", WsPath(True, ("a@depth5", "b@depth20"))),
        ("/stream?streams=a%40depth5", WsPath(True, ("a@depth5",))),
        ("/stream", WsPath(True, ())),
        ("/ws", WsPath(False, ())),
        ("/ws/a@depth5?timeUnit=MICROSECOND", WsPath(False, ("a@depth5",))),
        ("/ws/a@depth5/b@depth10/a@depth5", WsPath(False, ("a@depth5", "b@depth10"))),
        ("/api/v3/depth", None),
        ("/", None),
    ],
)
def test_ws_paths(path: str, expected: WsPath | None) -> None:
    assert parse_ws_path(path) == expected
