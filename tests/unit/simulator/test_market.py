"""Symbol specs, generated names, the exchangeInfo document and synthetic books (determinism, Binance's invariants)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from decimal import Decimal

import orjson
import pytest

from models.errors import ConfigError
from models.vocabulary import DEFAULT_SYMBOLS
from simulator import (
    Market,
    SimConfig,
    SymbolBook,
    book_at,
    build_simulator,
    exchange_info,
    make_spec,
    random_symbol_names,
)

pytestmark = pytest.mark.unit

SYMBOLS = ("BTCUSDT", "ETHUSDT", "PEPEUSDT", "TRXUSDT", "QWZUSDT", "ABCBTC")


def test_default_symbols_are_the_vocabulary_ones() -> None:
    assert SimConfig().symbols is DEFAULT_SYMBOLS


@pytest.mark.parametrize(
    ("symbol", "base", "quote"),
    [("BTCUSDT", "BTC", "USDT"), ("ethbtc", "ETH", "BTC"), ("SOLFDUSD", "SOL", "FDUSD"), ("XYZQQQQ", "XYZ", "QQQQ")],
)
def test_base_and_quote_assets(symbol: str, base: str, quote: str) -> None:
    spec = make_spec(symbol, seed=0)
    assert (spec.symbol, spec.base_asset, spec.quote_asset) == (symbol.upper(), base, quote)


def test_tick_sizes_follow_price_scale() -> None:
    btc, pepe = make_spec("BTCUSDT", seed=0), make_spec("PEPEUSDT", seed=0)
    assert btc.tick_e8 == 1_000_000 and 50_000 < btc.start_mid_e8 / 1e8 < 70_000  # a tick of 0.01
    assert pepe.tick_e8 == 1 and pepe.start_mid_e8 / 1e8 < 0.0001  # a tick of 0.00000001


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


def _payloads(symbol: str, seed: int, steps: int, depth: int = 20) -> list[bytes]:
    book = SymbolBook(make_spec(symbol, seed=seed), seed=seed)
    out = []
    for _ in range(steps):
        book.advance()
        out.append(book.payload(depth))
    return out


def test_same_seed_same_books() -> None:
    assert _payloads("BTCUSDT", 7, 300) == _payloads("BTCUSDT", 7, 300)


def test_other_seed_other_books() -> None:
    assert _payloads("BTCUSDT", 7, 5) != _payloads("BTCUSDT", 8, 5)


def test_nth_book_depends_on_seed_symbol_n_only() -> None:
    spec = make_spec("ETHUSDT", seed=3)
    market = Market([make_spec(s, seed=3) for s in ("BTCUSDT", "ETHUSDT")], seed=3)
    market.book("BTCUSDT").advance()  # another symbol moving changes nothing for ETHUSDT
    eth = market.book("ETHUSDT")
    for _ in range(42):
        eth.advance()
    assert eth.payload(20) == book_at(spec, seed=3, n=42).payload(20)


def test_market_moves_a_book_at_most_every_50_ms() -> None:
    market = Market([make_spec("BTCUSDT", seed=1)], seed=1)
    book = market.book("BTCUSDT")
    for now in (10.0, 10.01, 10.049):
        market.refresh(book, now)
    assert book.n == 1
    market.refresh(book, 10.05)
    assert book.n == 2 and market.book("BTCUSDT") is book


@pytest.mark.parametrize("symbol", SYMBOLS)
@pytest.mark.parametrize("allow_thin", [False, True])
def test_books_keep_binance_invariants(symbol: str, allow_thin: bool) -> None:
    spec = make_spec(symbol, seed=11, allow_thin=allow_thin)
    tick = Decimal(spec.tick_e8).scaleb(-8)
    step = Decimal(spec.step_e8).scaleb(-8)
    book = SymbolBook(spec, seed=11)
    previous_id = book.last_update_id
    for _ in range(2000):
        book.advance()
        doc = orjson.loads(book.payload(20))
        assert list(doc) == ["lastUpdateId", "bids", "asks"]
        assert doc["lastUpdateId"] > previous_id
        previous_id = doc["lastUpdateId"]
        bids = [(Decimal(p), Decimal(q)) for p, q in doc["bids"]]
        asks = [(Decimal(p), Decimal(q)) for p, q in doc["asks"]]
        assert 1 <= len(bids) <= 20 and 1 <= len(asks) <= 20
        assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
        assert [p for p, _ in asks] == sorted(p for p, _ in asks)
        assert len({p for p, _ in bids}) == len(bids) and len({p for p, _ in asks}) == len(asks)
        assert bids[0][0] < asks[0][0]
        for price_text, qty_text in doc["bids"] + doc["asks"]:
            assert len(price_text.split(".")[1]) == 8 and len(qty_text.split(".")[1]) == 8
            assert Decimal(price_text) > 0 and Decimal(price_text) % tick == 0
            assert Decimal(qty_text) > 0 and Decimal(qty_text) % step == 0


def test_liquid_symbols_have_twenty_levels_and_depth_limits() -> None:
    book = book_at(make_spec("BTCUSDT", seed=0), seed=0, n=50)
    for depth in (5, 10, 20):
        doc = orjson.loads(book.payload(depth))
        assert len(doc["bids"]) == depth and len(doc["asks"]) == depth


def test_thin_symbols_exist_with_fewer_levels() -> None:
    levels = {make_spec(f"T{i}XUSDT", seed=1, allow_thin=True).levels for i in range(60)}
    assert 20 in levels and min(levels) < 20 and min(levels) >= 1


def test_update_id_steps_are_irregular() -> None:
    book = SymbolBook(make_spec("BNBUSDT", seed=2), seed=2)
    ids = [book.last_update_id]
    for _ in range(200):
        book.advance()
        ids.append(book.last_update_id)
    steps = {b - a for a, b in itertools.pairwise(ids)}
    assert min(steps) >= 1 and len(steps) > 5


@pytest.mark.parametrize(("count", "expected"), [(0, 0), (3, 0), (19, 0), (20, 1), (60, 1), (300, 3), (1500, 15)])
def test_about_one_percent_of_random_symbols_do_not_trade(count: int, expected: int) -> None:
    config = SimConfig(random_symbols=count, seed=2) if count else SimConfig()
    bundle = build_simulator(config)
    assert len(bundle.not_trading) == expected
    assert bundle.not_trading <= set(bundle.symbols)


def test_non_trading_choice_is_deterministic_and_settable() -> None:
    first = build_simulator(SimConfig(random_symbols=500, seed=9)).not_trading
    assert build_simulator(SimConfig(random_symbols=500, seed=9)).not_trading == first
    assert build_simulator(SimConfig(random_symbols=500, seed=10)).not_trading != first
    assert len(build_simulator(SimConfig(random_symbols=500, seed=9, not_trading=40)).not_trading) == 40
    assert build_simulator(SimConfig(random_symbols=500, seed=9, not_trading=0)).not_trading == frozenset()
    with pytest.raises(ConfigError):
        SimConfig(not_trading=-1)


def test_generated_names_split_back_into_their_assets() -> None:
    for name in random_symbol_names(3000, seed=1):
        spec = make_spec(name, seed=1)
        assert spec.base_asset + spec.quote_asset == name
        assert spec.quote_asset in {"USDT", "FDUSD", "BTC", "USDC"} and len(spec.base_asset) >= 3


def test_exchange_info_shows_each_symbol_status() -> None:
    spec = make_spec("BTCUSDT", seed=0)
    halted = dataclasses.replace(spec, status="BREAK")
    doc = exchange_info([spec, halted], server_time_ms=0)
    assert [(s["status"], s["isSpotTradingAllowed"]) for s in doc["symbols"]] == [("TRADING", True), ("BREAK", False)]
