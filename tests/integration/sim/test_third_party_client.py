"""A Binance client library written elsewhere (binance-connector) connects by URL and receives depth frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import pytest
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient

pytestmark = pytest.mark.integration


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
