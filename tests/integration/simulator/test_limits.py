"""Binance's limits as the simulator enforces them, each violation logged (``limit violation:``) and counted in
``GET /control/stats``; the connection lifetime, per connection."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import websocket

from simulator import ServerConfig, SimConfig, SimulatorThread

pytestmark = pytest.mark.integration


def _violations(caplog: pytest.LogCaptureFixture, kind: str) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return [m for m in messages if m.startswith(f"limit violation: {kind} ")]


def _status_of_handshake(url: str) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(url, timeout=5)
    return int(exc.value.status_code)


def test_connections_past_the_rate_limit_get_429(connect, http, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="simulator")
    with SimulatorThread(SimConfig(server=ServerConfig(max_connections_per_5m=2))) as sim:
        first, second = connect(sim.url(["btcusdt@depth5@100ms"])), connect(sim.url())
        assert _status_of_handshake(sim.url()) == 429
        assert _status_of_handshake(sim.url()) == 429  # refused attempts do not reopen the window
        assert "lastUpdateId" in first.recv()
        second.send({"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert second.reply() == {"result": [], "id": 1}
        assert http(sim.http_url("/api/v3/ping")) == (200, {})  # plain HTTP requests are not connections
        _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["connection_rate"] == 2 and stats["connections_total"] == 2
    assert len(_violations(caplog, "connection_rate")) == 2


def test_uri_over_8_kib_gets_414(sim, http, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="simulator")
    streams = [f"symbol{i:04d}usdt@depth20@100ms" for i in range(300)]  # 28 bytes each: 8.4 KB, 300 streams
    assert len(sim.url(streams)) > 8192
    assert _status_of_handshake(sim.url(streams)) == 414
    _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["uri_too_long"] == 1 and stats["connections_total"] == 0
    assert len(_violations(caplog, "uri_too_long")) == 1


def test_uri_limit_is_configurable(connect, http, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="simulator")
    with SimulatorThread(SimConfig(server=ServerConfig(max_uri_bytes=64))) as sim:
        too_long = sim.url(["btcusdt@depth20@100ms", "ethusdt@depth20@100ms", "bnbusdt@depth5"])
        assert _status_of_handshake(too_long) == 414
        assert "lastUpdateId" in connect(sim.url(["btcusdt@depth20@100ms"])).recv()
        _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["uri_too_long"] == 1
    assert len(_violations(caplog, "uri_too_long")) == 1


def test_subscribe_past_1024_streams_gets_an_error_reply_and_is_counted(
    sim, connect, http, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="simulator")
    client = connect(sim.url())
    client.send({"method": "SUBSCRIBE", "params": [f"s{i}@depth5" for i in range(1000)], "id": 1})
    assert client.reply() == {"result": None, "id": 1}
    client.send({"method": "SUBSCRIBE", "params": [f"t{i}@depth5" for i in range(25)], "id": 2})
    reply = client.reply()
    assert reply["id"] == 2 and reply["error"]["code"] == 2 and "too many streams" in reply["error"]["msg"]
    client.send({"method": "LIST_SUBSCRIPTIONS", "id": 3})
    assert len(client.reply()["result"]) == 1000  # the refused SUBSCRIBE changed nothing; the connection stays
    _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["streams_per_connection"] == 1
    assert len(_violations(caplog, "streams_per_connection")) == 1


def test_streams_past_1024_in_the_url_are_counted(sim, http) -> None:
    assert _status_of_handshake(sim.url([f"s{i}" for i in range(1025)])) == 400
    _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["streams_per_connection"] == 1


def test_more_than_five_messages_per_second_closes_and_is_counted(
    sim, connect, http, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="simulator")
    client = connect(sim.url())
    for i in range(6):
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": i})
    assert client.wait_closed() == 1008
    _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["messages_per_second"] == 1
    assert len(_violations(caplog, "messages_per_second")) == 1


@pytest.mark.parametrize("control", ["ping", "pong"])
def test_pings_and_pongs_count_as_incoming_messages(sim, connect, http, control: str) -> None:
    client = connect(sim.url())
    for _ in range(6):
        getattr(client.ws, control)(b"hi")
    assert client.wait_closed() == 1008
    _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["messages_per_second"] == 1


def test_five_messages_per_second_are_allowed(sim, connect, http) -> None:
    client = connect(sim.url())
    for _ in range(3):
        client.ws.ping(b"hi")
    for i in range(2):
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": i})
        assert client.reply() == {"result": [], "id": i}
    _, stats = http(sim.http_url("/control/stats"))
    assert stats["violations"]["messages_per_second"] == 0 and stats["connections"] == 1


def _until_shutdown(client) -> tuple[float, float, int | None]:
    """Read until the serverShutdown event, then until the close; when each came (monotonic) and the close code."""
    while "serverShutdown" not in client.recv():
        pass
    event_at = time.monotonic()
    code = client.wait_closed(timeout=10)
    return event_at, time.monotonic(), code


def test_each_connection_has_its_own_lifetime(connect) -> None:
    server = ServerConfig(max_lifetime_s=2.0, shutdown_notice_s=0.5)
    with SimulatorThread(SimConfig(server=server)) as sim:
        early = connect(sim.url(["btcusdt@depth5@100ms"]), timeout=10)
        early.recv()
        time.sleep(1.0)
        late = connect(sim.url(["btcusdt@depth5@100ms"]), timeout=10)
        late.recv()
        early_event, early_closed, early_code = _until_shutdown(early)
        late_event, _, late_code = _until_shutdown(late)
    assert early_code == late_code == 1001
    assert early_event < early_closed < late_event  # the later connection outlived the first one's close


def test_a_client_that_does_not_read_misses_frames_instead_of_growing_the_buffer(connect) -> None:
    server = ServerConfig(slow_client_bytes=256 * 1024)
    with SimulatorThread(SimConfig(random_symbols=100, seed=2, not_trading=0, server=server)) as sim:
        streams = [f"{symbol.lower()}@depth20@100ms" for symbol in sim.symbols]
        reader = connect(sim.url(streams[:1]))
        idle = websocket.create_connection(
            sim.url(streams), timeout=5, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
        )
        try:
            deadline = time.monotonic() + 60
            while sim.stats()["frames_skipped"] == 0:  # the kernel's buffers fill first (a few MB)
                assert time.monotonic() < deadline, "no frame skipped"
                reader.frames(0.5)
            assert "lastUpdateId" in reader.recv()  # the reading client is served all along
        finally:
            idle.shutdown()
