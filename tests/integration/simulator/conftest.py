"""Fixtures for the simulator suite: an in-process simulator and websocket clients closed after each test."""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import websocket

from simulator import SimConfig, SimulatorThread


class Client:
    """A websocket-client connection with small helpers for tests."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=timeout)

    def send(self, doc: Any) -> None:
        self.ws.send(doc if isinstance(doc, str) else orjson.dumps(doc).decode())

    def recv(self) -> str:
        opcode, data = self.ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected text, got opcode {opcode}"
        return data.decode()

    def json(self) -> Any:
        return orjson.loads(self.recv())

    def reply(self, timeout: float = 5.0) -> Any:
        """Next message that answers a request (has an ``id``), skipping data frames."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = orjson.loads(self.recv())
            if isinstance(doc, dict) and "id" in doc:
                return doc
        raise AssertionError("no reply")

    def frames(self, seconds: float) -> list[tuple[float, str]]:
        """Every text frame received within ``seconds``, with its arrival time (monotonic)."""
        out: list[tuple[float, str]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                text = self.recv()
            except websocket.WebSocketTimeoutException:
                break
            out.append((time.monotonic(), text))
        self.ws.settimeout(5.0)
        return out

    def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; the close code, or None when the TCP connection just died."""
        deadline = time.monotonic() + timeout
        self.ws.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                return None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 1005
        raise AssertionError("connection still open")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close(timeout=0.5)
        self.ws.shutdown()


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(url: str, timeout: float = 5.0) -> Client:
        client = Client(url, timeout)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig(seed=1)) as simulator:
        yield simulator


def http(url: str, method: str = "GET") -> tuple[int, Any]:
    """Status and JSON body of an HTTP request (POST without body, as the control API expects)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())


@pytest.fixture(name="http")
def http_fixture() -> Callable[..., tuple[int, Any]]:
    return http
