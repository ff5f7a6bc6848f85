"""Symbol specs, generated names and the exchangeInfo document."""

from __future__ import annotations

import re

import pytest

from feed.sim import exchange_info, make_spec, random_symbol_names
from feed.sim._symbols import format_e8, split_symbol

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("symbol", "base", "quote"),
    [("BTCUSDT", "BTC", "USDT"), ("ethbtc", "ETH", "BTC"), ("SOLFDUSD", "SOL", "FDUSD"), ("XYZQQQQ", "XYZ", "QQQQ")],
)
def test_split_symbol(symbol: str, base: str, quote: str) -> None:
    assert split_symbol(symbol) == (base, quote)


def test_tick_sizes_follow_price_scale() -> None:
    btc, pepe = make_spec("BTCUSDT", seed=0), make_spec("PEPEUSDT", seed=0)
    assert format_e8(btc.tick_e8) == "0.01000000" and 50_000 < btc.start_mid_e8 / 1e8 < 70_000
    assert format_e8(pepe.tick_e8) == "0.00000001" and pepe.start_mid_e8 / 1e8 < 0.0001


def test_random_names_are_plausible_unique_and_deterministic() -> None:
    names = random_symbol_names(200, seed=5)
    assert names == random_symbol_names(200, seed=5) != random_symbol_names(200, seed=6)
    assert len(set(names)) == 200
    assert all(re.fullmatch(r"[A-Z]{3,5}(USDT|FDUSD|BTC|USDC)", n) for n in names)


def test_exchange_info_has_binance_shape() -> None:
    doc = exchange_info([make_spec("BTCUSDT", seed=0)], server_time_ms=123)
    assert doc["timezone"] == "UTC" and doc["serverTime"] == 123
    (info,) = doc["symbols"]
    assert (info["symbol"], info["status"], info["baseAsset"], info["quoteAsset"]) == (
        "BTCUSDT",
        "TRADING",
        "BTC",
        "USDT",
    )
    price, lot = info["filters"]
    assert price == {
        "filterType": "PRICE_FILTER",
        "minPrice": "0.01000000",
        "maxPrice": "1000000.00000000",
        "tickSize": "0.01000000",
    }
    assert lot["filterType"] == "LOT_SIZE" and lot["stepSize"] == lot["minQty"] == "0.00001000"
