"""Connection rules of the server: pings, pong timeout and the connection lifetime, with short intervals."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import websocket

from simulator import ServerConfig, SimConfig, SimulatorThread

pytestmark = pytest.mark.integration


def test_server_pings_at_the_configured_interval(connect) -> None:
    with SimulatorThread(SimConfig(server=ServerConfig(ping_interval_s=0.2, pong_timeout_s=5))) as sim:
        client = connect(sim.url())
        pings = 0
        deadline = time.monotonic() + 1.1
        while time.monotonic() < deadline:
            frame = client.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_PING:
                pings += 1
                client.ws.pong(frame.data)
        assert 4 <= pings <= 6


def _opcodes_for(client, seconds: float, out: list[int]) -> None:
    """Read frames for ``seconds``; websocket-client answers each ping while doing so."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        client.ws.settimeout(left)
        try:
            opcode, _ = client.ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            return
        out.append(opcode)


def test_no_pong_closes_the_connection(connect) -> None:
    with SimulatorThread(SimConfig(server=ServerConfig(ping_interval_s=0.2, pong_timeout_s=0.4))) as sim:
        silent = connect(sim.url())  # reads frames itself and never answers pings
        polite = connect(sim.url())
        polite_opcodes: list[int] = []
        reader = threading.Thread(target=_opcodes_for, args=(polite, 1.5, polite_opcodes))
        reader.start()
        start = time.monotonic()
        code = None
        while code is None and time.monotonic() - start < 3:
            frame = silent.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big")
        assert code == 1011 and 0.5 < time.monotonic() - start < 1.5
        reader.join()
        assert polite_opcodes.count(websocket.ABNF.OPCODE_PING) >= 4
        assert websocket.ABNF.OPCODE_CLOSE not in polite_opcodes
        polite.send({"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert polite.reply() == {"result": [], "id": 1}


def test_lifetime_ends_with_server_shutdown_event(connect) -> None:
    with SimulatorThread(SimConfig(server=ServerConfig(max_lifetime_s=0.6))) as sim:
        client = connect(sim.url(["btcusdt@depth5@100ms"]))
        start = time.monotonic()
        while True:
            doc = orjson.loads(client.recv())
            if doc.get("e") == "serverShutdown":
                break
        assert 0.5 < time.monotonic() - start < 1.5
        assert list(doc) == ["e", "E"] and abs(doc["E"] - time.time() * 1000) < 5000
        assert client.wait_closed() == 1001
