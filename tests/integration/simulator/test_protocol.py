"""Binance protocol rules over real localhost sockets, and a Binance client library written elsewhere
(binance-connector) connecting by URL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import websocket
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient

from simulator import ServerConfig, SimConfig, SimulatorThread

pytestmark = pytest.mark.integration


def test_combined_path_wraps_payloads(sim, connect) -> None:
    text = connect(sim.url(["btcusdt@depth20@100ms"])).recv()
    assert text.startswith('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":')
    assert " " not in text


def test_raw_path_sends_bare_payloads(sim, connect) -> None:
    doc = connect(sim.url(["ethusdt@depth10"], combined=False)).json()
    assert list(doc) == ["lastUpdateId", "bids", "asks"]
    assert len(doc["bids"]) == len(doc["asks"]) == 10


def test_raw_path_with_several_streams(sim, connect) -> None:
    client = connect(sim.url(["btcusdt@depth5@100ms", "ethusdt@depth5@100ms"], combined=False))
    sizes = {len(client.json()["bids"]) for _ in range(4)}
    assert sizes == {5}


def test_depth_levels(sim, connect) -> None:
    names = ["btcusdt@depth5@100ms", "btcusdt@depth10@100ms", "bnbusdt@depth20@100ms"]
    client = connect(sim.url(names))
    seen = {}
    while len(seen) < 3:
        doc = client.json()
        seen[doc["stream"]] = doc["data"]
    for name, levels in zip(names, (5, 10, 20), strict=True):
        assert len(seen[name]["bids"]) == len(seen[name]["asks"]) == levels
        assert float(seen[name]["bids"][0][0]) < float(seen[name]["asks"][0][0])


def test_cadence_100ms_and_1000ms(sim, connect) -> None:
    client = connect(sim.url(["btcusdt@depth5@100ms", "ethusdt@depth5"]))
    frames = client.frames(2.05)
    fast = sum('"btcusdt@depth5@100ms"' in text for _, text in frames)
    slow = sum('"ethusdt@depth5"' in text for _, text in frames)
    assert 15 <= fast <= 23
    assert 2 <= slow <= 3


def test_subscribe_list_unsubscribe_on_bare_ws(sim, connect) -> None:
    client = connect(sim.url(combined=False))
    client.send('{"method":"SUBSCRIBE","params":["btcusdt@depth5@100ms","ethusdt@depth20@100ms"],"id":1}')
    assert client.recv() == '{"result":null,"id":1}'
    assert "lastUpdateId" in client.json()
    client.send({"method": "LIST_SUBSCRIPTIONS", "id": 3})
    assert client.reply() == {"result": ["btcusdt@depth5@100ms", "ethusdt@depth20@100ms"], "id": 3}
    client.send({"method": "UNSUBSCRIBE", "params": ["btcusdt@depth5@100ms", "ethusdt@depth20@100ms"], "id": 4})
    assert client.reply() == {"result": None, "id": 4}
    assert client.frames(0.35) == []


def test_set_property_combined_wraps_frames(sim, connect) -> None:
    client = connect(sim.url(["btcusdt@depth5@100ms"], combined=False))
    client.send({"method": "SET_PROPERTY", "params": ["combined", True], "id": 5})
    assert client.reply() == {"result": None, "id": 5}
    assert client.json()["stream"] == "btcusdt@depth5@100ms"


def test_error_replies(sim, connect) -> None:
    client = connect(sim.url())
    client.send("{not json")
    error = client.json()
    assert error["error"]["code"] == 3 and error["id"] is None
    client.send({"method": "SUBSCRIBEX", "params": [], "id": 9})
    error = client.json()
    assert error["error"]["code"] == 2 and error["id"] == 9
    assert error["error"]["msg"].startswith("Invalid request: unknown variant `SUBSCRIBEX`")


def test_more_than_five_messages_per_second_closes(sim, connect) -> None:
    client = connect(sim.url())
    for i in range(5):
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": i})
        assert client.reply() == {"result": [], "id": i}
    client.send({"method": "LIST_SUBSCRIPTIONS", "id": 6})
    assert client.wait_closed() == 1008


def test_stream_limit_by_subscribe(connect) -> None:
    config = SimConfig(server=ServerConfig(max_messages_per_s=5))
    with SimulatorThread(config) as sim:
        client = connect(sim.url())
        client.send({"method": "SUBSCRIBE", "params": [f"s{i}@depth5" for i in range(1024)], "id": 1})
        assert client.reply() == {"result": None, "id": 1}
        client.send({"method": "SUBSCRIBE", "params": ["btcusdt@depth5"], "id": 2})
        reply = client.reply()
        assert reply["error"]["code"] == 2 and reply["id"] == 2
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": 3})
        assert len(client.reply()["result"]) == 1024


def test_stream_limit_by_url(sim) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(sim.url([f"s{i}" for i in range(1025)]), timeout=5)
    assert exc.value.status_code == 400


def test_unknown_streams_are_acknowledged_then_silent(sim, connect) -> None:
    client = connect(sim.url(["xrpusdt@depth20@100ms"]))
    client.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "BTCUSDT@depth5@100ms"], "id": 1})
    assert client.reply() == {"result": None, "id": 1}
    assert client.frames(0.4) == []


def test_books_are_shared_between_clients(sim, connect) -> None:
    first = connect(sim.url(["btcusdt@depth20@100ms"]))
    second = connect(sim.url(["btcusdt@depth20@100ms"]))
    by_id = {}
    for _, text in first.frames(0.5) + second.frames(0.5):
        data = text[text.index('"data":') :]
        by_id.setdefault(data[: data.index(",")], set()).add(data)
    assert all(len(payloads) == 1 for payloads in by_id.values())


def test_exchange_info(sim, http) -> None:
    status, doc = http(sim.http_url("/api/v3/exchangeInfo"))
    assert status == 200 and doc["timezone"] == "UTC" and isinstance(doc["serverTime"], int)
    assert [s["symbol"] for s in doc["symbols"]] == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    price_filter = doc["symbols"][0]["filters"][0]
    assert price_filter["filterType"] == "PRICE_FILTER" and price_filter["tickSize"] == "0.01000000"
    status, doc = http(sim.http_url('/api/v3/exchangeInfo?symbols=["ETHUSDT"]'))
    assert [s["symbol"] for s in doc["symbols"]] == ["ETHUSDT"]
    assert http(sim.http_url("/api/v3/exchangeInfo?symbol=NOPE")) == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert http(sim.http_url("/nowhere"))[0] == 404


def test_random_symbols_serve_and_list(connect, http) -> None:
    with SimulatorThread(SimConfig(random_symbols=50, seed=4)) as sim:
        assert len(sim.symbols) == 50
        _, doc = http(sim.http_url("/api/v3/exchangeInfo"))
        assert [s["symbol"] for s in doc["symbols"]] == list(sim.symbols)
        stream = f"{sim.symbols[0].lower()}@depth20@100ms"
        assert 1 <= len(connect(sim.url([stream])).json()["data"]["bids"]) <= 20


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.event = threading.Event()

    def on_message(self, _manager: object, text: str) -> None:
        self.messages.append(orjson.loads(text))
        if sum("lastUpdateId" in str(m) for m in self.messages) >= 3:
            self.event.set()


@pytest.fixture
def clients() -> Iterator[list[SpotWebsocketStreamClient]]:
    made: list[SpotWebsocketStreamClient] = []
    yield made
    for client in made:
        client.stop()  # sends a close frame and joins the reader thread, but leaves the socket open
        client.socket_manager.ws.shutdown()


@pytest.mark.parametrize("is_combined", [False, True])
def test_binance_connector_receives_partial_depth(sim, clients, is_combined: bool) -> None:
    inbox = _Inbox()
    client = SpotWebsocketStreamClient(
        stream_url=f"ws://127.0.0.1:{sim.port}", on_message=inbox.on_message, is_combined=is_combined
    )
    clients.append(client)
    client.partial_book_depth(symbol="btcusdt", level=10, speed=100, id=7)
    assert inbox.event.wait(timeout=5)
    assert inbox.messages[0] == {"result": None, "id": 7}
    depth = inbox.messages[1]["data"] if is_combined else inbox.messages[1]
    if is_combined:
        assert inbox.messages[1]["stream"] == "btcusdt@depth10@100ms"
    assert len(depth["bids"]) == len(depth["asks"]) == 10
    client.list_subscribe(id=8)
    deadline = time.monotonic() + 5
    while {"result": ["btcusdt@depth10@100ms"], "id": 8} not in inbox.messages:
        assert time.monotonic() < deadline
        time.sleep(0.05)
