"""feed.universe against real servers: the simulator's exchangeInfo (every TRADING symbol, filters, shards) and
REST failures turned into one readable UniverseError line."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from feed.universe import SymbolSource, UniverseError, fetch_exchange_info
from models.settings import Settings
from simulator import SimConfig, SimulatorThread
from stack.harness import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig(random_symbols=300, seed=9)) as s:
        yield s


def trading(sim: SimulatorThread) -> dict[str, str]:
    """symbol -> quote asset of every TRADING symbol the simulator lists (read here without feed.universe)."""
    with urllib.request.urlopen(sim.http_url("/api/v3/exchangeInfo"), timeout=10) as r:
        doc = json.load(r)
    return {e["symbol"]: e["quoteAsset"] for e in doc["symbols"] if e["status"] == "TRADING"}


def source(sim: SimulatorThread, **settings: str) -> SymbolSource:
    return SymbolSource.from_settings(Settings(symbols="all", rest_url=sim.http_url(), **settings))


def test_all_is_every_trading_symbol_of_the_simulator(sim: SimulatorThread) -> None:
    expected = trading(sim)
    assert len(expected) > 200
    streams = source(sim).streams()
    assert streams == tuple(sorted(f"{s.lower()}@depth20" for s in expected))
    assert {s.upper() for s in sim.symbols} >= {n.split("@")[0].upper() for n in streams}


def test_quote_filter_and_exclude_on_the_simulator(sim: SimulatorThread) -> None:
    expected = trading(sim)
    usdt = sorted(s for s, q in expected.items() if q == "USDT")
    assert source(sim, quote="usdt", exclude=usdt[0]).symbols() == tuple(usdt[1:])


def test_two_shards_split_the_simulator_symbols(sim: SimulatorThread) -> None:
    first, second = (source(sim, shard=f"{i}/2").symbols() for i in (0, 1))
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(trading(sim))


def test_nobody_listening_is_a_universe_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UniverseError) as info:
        source_url(url).streams()
    message = str(info.value)
    assert message.startswith(f"GET {url}/api/v3/exchangeInfo: ") and "refused" in message.lower()


def source_url(url: str) -> SymbolSource:
    return SymbolSource.from_settings(Settings(symbols="all", rest_url=url))


class _Answer(BaseHTTPRequestHandler):
    status, body = 200, b""

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def answering() -> Iterator[type[_Answer]]:
    handler = type("Handler", (_Answer,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (503, b"down", "HTTP 503 Service Unavailable"),
        (429, b"{}", "HTTP 429 Too Many Requests (rate limited"),
        (200, b"<html>maintenance</html>", "the answer is not JSON"),
        (200, b'{"code": -1000}', "exchangeInfo has no 'symbols' list"),
    ],
)
def test_a_failing_rest_server_is_one_readable_line(
    answering: type[_Answer], status: int, body: bytes, reason: str
) -> None:
    answering.status, answering.body = status, body
    with pytest.raises(UniverseError) as info:
        source_url(answering.url).streams()  # type: ignore[attr-defined]
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_credentials_in_the_rest_url_never_reach_the_message(answering: type[_Answer]) -> None:
    answering.status, answering.body = 500, b""
    url = answering.url.replace("http://", "http://user:s3cret@")  # type: ignore[attr-defined]
    with pytest.raises(UniverseError) as info:
        fetch_exchange_info(url)
    assert str(info.value).startswith("GET http://127.0.0.1:") and "s3cret" not in str(info.value)
