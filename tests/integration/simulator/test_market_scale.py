"""The simulated market at scale: symbols listed but not trading (never streamed), quote assets in exchangeInfo,
and frames shared by every connection of a stream."""

from __future__ import annotations

import orjson
import pytest

from simulator import SimConfig, SimulatorThread

pytestmark = pytest.mark.integration


def test_exchange_info_lists_non_trading_symbols_that_are_never_streamed(connect, http) -> None:
    with SimulatorThread(SimConfig(random_symbols=60, seed=3)) as sim:
        _, doc = http(sim.http_url("/api/v3/exchangeInfo"))
        statuses = {s["symbol"]: s["status"] for s in doc["symbols"]}
        halted = sorted(symbol for symbol, status in statuses.items() if status != "TRADING")
        assert len(statuses) == 60 and len(halted) == 1 and statuses[halted[0]] == "BREAK"
        assert set(halted) == sim.not_trading
        trading = next(symbol for symbol, status in statuses.items() if status == "TRADING")
        client = connect(sim.url())
        streams = [f"{halted[0].lower()}@depth20@100ms", f"{trading.lower()}@depth5@100ms"]
        client.send({"method": "SUBSCRIBE", "params": streams, "id": 1})
        assert client.reply() == {"result": None, "id": 1}  # accepted, as Binance does
        received = {orjson.loads(text)["stream"] for _, text in client.frames(1.0)}
        stats = sim.stats()
    assert received == {streams[1]}
    assert streams[0] not in stats["frames"]


def test_exchange_info_splits_base_and_quote_assets(http) -> None:
    with SimulatorThread(SimConfig(random_symbols=300, seed=5)) as sim:
        _, doc = http(sim.http_url("/api/v3/exchangeInfo"))
    quotes = {s["quoteAsset"] for s in doc["symbols"]}
    assert {"USDT", "FDUSD"} <= quotes <= {"USDT", "FDUSD", "BTC", "USDC"}
    assert all(s["baseAsset"] + s["quoteAsset"] == s["symbol"] for s in doc["symbols"])
    assert sum(s["status"] != "TRADING" for s in doc["symbols"]) == 3
    assert all(s["isSpotTradingAllowed"] == (s["status"] == "TRADING") for s in doc["symbols"])


def test_not_trading_count_is_settable_and_fixed_symbols_all_trade(http) -> None:
    with SimulatorThread(SimConfig(symbols=("BTCUSDT", "ETHUSDT", "BNBUSDT"), not_trading=1)) as sim:
        _, doc = http(sim.http_url("/api/v3/exchangeInfo"))
        assert sum(s["status"] == "BREAK" for s in doc["symbols"]) == 1
    with SimulatorThread(SimConfig()) as sim:
        _, doc = http(sim.http_url("/api/v3/exchangeInfo"))
        assert {s["status"] for s in doc["symbols"]} == {"TRADING"} and sim.not_trading == frozenset()


def _by_update_id(frames: list[tuple[float, str]]) -> dict[tuple[str, int], str]:
    out = {}
    for _, text in frames:
        doc = orjson.loads(text)
        out[(doc["stream"], doc["data"]["lastUpdateId"])] = text
    return out


def test_connections_on_the_same_streams_receive_identical_frames(sim, connect) -> None:
    streams = ["btcusdt@depth20@100ms", "btcusdt@depth5", "ethusdt@depth10@100ms"]
    first = connect(sim.url(streams))
    first.recv()
    second = connect(sim.url(), timeout=5)  # joins later, by SUBSCRIBE on a bare connection
    second.send({"method": "SUBSCRIBE", "params": streams, "id": 1})
    assert second.reply() == {"result": None, "id": 1}
    # Both sockets buffer while the other is read: reading them one after the other loses nothing.
    seen_first = _by_update_id(first.frames(2.5))
    seen_second = _by_update_id(second.frames(0.3))
    assert {stream for stream, _ in seen_second} == set(streams)
    assert len(seen_second) >= 15
    # Every frame the later connection got, the earlier one got too, byte for byte.
    last = {stream: max(i for s, i in seen_first if s == stream) for stream in streams}
    missing = [(stream, i) for stream, i in seen_second if (stream, i) not in seen_first and i <= last[stream]]
    assert missing == []
    assert all(seen_first[key] == text for key, text in seen_second.items() if key in seen_first)
