"""Stream names, websocket paths and URLs, the JSON methods and Binance's error replies."""

from __future__ import annotations

import orjson
import pytest

from simulator import DepthStream, WsPath, handle_request, parse_stream, parse_ws_path, ws_url

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
        "btcusdt@depth20@100ms\n",
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


def test_ws_urls() -> None:
    assert ws_url("h", 1, ["a@depth5", "b@depth5"]) == "ws://h:1/stream?streams=a@depth5/b@depth5"
    assert ws_url("h", 1, ["a@depth5"], combined=False) == "ws://h:1/ws/a@depth5"
    assert (ws_url("h", 1), ws_url("h", 1, combined=False)) == ("ws://h:1/stream", "ws://h:1/ws")


def _ask(raw: str, streams: tuple[str, ...] = (), combined: bool = False, max_streams: int = 1024) -> tuple:
    out = handle_request(raw, streams=streams, combined=combined, max_streams=max_streams)
    return orjson.loads(out.reply), out.streams, out.combined


def test_subscribe_unsubscribe_list() -> None:
    reply, streams, _ = _ask('{"method":"SUBSCRIBE","params":["btcusdt@depth20","a@depth5"],"id":1}')
    assert reply == {"result": None, "id": 1} and streams == ("btcusdt@depth20", "a@depth5")
    reply, streams, _ = _ask('{"method":"UNSUBSCRIBE","params":["a@depth5"],"id":2}', streams)
    assert reply == {"result": None, "id": 2} and streams == ("btcusdt@depth20",)
    reply, _, _ = _ask('{"method":"LIST_SUBSCRIPTIONS","id":3}', streams)
    assert reply == {"result": ["btcusdt@depth20"], "id": 3}


def test_reply_text_is_compact_like_binance() -> None:
    out = handle_request('{"method":"SUBSCRIBE","params":[],"id":1}', streams=(), combined=False, max_streams=9)
    assert out.reply == '{"result":null,"id":1}'


def test_combined_property() -> None:
    reply, _, combined = _ask('{"method":"SET_PROPERTY","params":["combined",true],"id":5}')
    assert reply == {"result": None, "id": 5} and combined is True
    assert _ask('{"method":"GET_PROPERTY","params":["combined"],"id":6}', combined=True)[0] == {"result": True, "id": 6}
    assert _ask('{"method":"SET_PROPERTY","params":["other",true],"id":7}')[0]["error"]["code"] == 0
    assert _ask('{"method":"SET_PROPERTY","params":["combined",1],"id":8}')[0]["error"]["code"] == 1


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        ("not json", 3, None),
        ("[1, 2]", 2, None),
        ('{"method":"FOO","id":4}', 2, 4),
        ('{"params":[],"id":4}', 2, 4),
        ('{"method":"SUBSCRIBE","params":"btcusdt@depth5","id":4}', 2, 4),
        ('{"method":"SUBSCRIBE","params":[],"id":true}', 2, None),
    ],
)
def test_errors(raw: str, code: int, request_id: int | None) -> None:
    reply, streams, _ = _ask(raw, ("x@depth5",))
    assert reply["error"]["code"] == code and reply["id"] == request_id and reply["error"]["msg"]
    assert streams == ("x@depth5",)


def test_unknown_variant_message_names_the_method() -> None:
    reply = _ask('{"method":"FOO","id":4}')[0]
    assert reply["error"]["msg"].startswith("Invalid request: unknown variant `FOO`")


def test_too_many_streams_rejected_and_state_kept() -> None:
    reply, streams, _ = _ask('{"method":"SUBSCRIBE","params":["a","b","c"],"id":9}', ("x",), max_streams=3)
    assert reply["error"]["code"] == 2 and streams == ("x",)
