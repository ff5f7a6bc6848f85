"""feed.universe: exchangeInfo parsing, the TRADING/quote/exclude filters, stable shards and SymbolSource (fake
fetch; the real simulator's exchangeInfo is read in tests/integration/test_universe.py)."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest

from feed.universe import (
    SymbolInfo,
    SymbolSource,
    UniverseError,
    diff_streams,
    in_shard,
    parse_exchange_info,
    select_symbols,
    shard_of,
)
from models.errors import PipelineError
from models.settings import Settings

pytestmark = pytest.mark.unit


def info_doc(*entries: tuple[str, str, str]) -> dict[str, Any]:
    """An exchangeInfo document with (symbol, status, quoteAsset) entries, in Binance's shape."""
    return {
        "timezone": "UTC",
        "symbols": [{"symbol": s, "status": st, "baseAsset": s[:3], "quoteAsset": q} for s, st, q in entries],
    }


def names(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 6))) + "USDT")
    return sorted(out)


DOC = info_doc(
    ("BTCUSDT", "TRADING", "USDT"),
    ("ETHFDUSD", "TRADING", "FDUSD"),
    ("ETHBTC", "TRADING", "BTC"),
    ("OLDUSDT", "BREAK", "USDT"),
    ("HALTUSDT", "HALT", "USDT"),
)


def test_parse_keeps_symbol_status_and_quote() -> None:
    assert parse_exchange_info(DOC)[:2] == [
        SymbolInfo("BTCUSDT", "TRADING", "USDT"),
        SymbolInfo("ETHFDUSD", "TRADING", "FDUSD"),
    ]


def test_parse_skips_entries_that_are_not_symbols() -> None:
    doc = {"symbols": [{"symbol": "BTC-USDT", "status": "TRADING"}, "x", {"symbol": "bnbusdt", "status": "TRADING"}]}
    assert parse_exchange_info(doc) == [SymbolInfo("BNBUSDT", "TRADING", "")]


@pytest.mark.parametrize("doc", [{}, [], {"symbols": "BTCUSDT"}, None, {"code": -1003, "msg": "Too many requests"}])
def test_parse_refuses_what_is_not_exchange_info(doc: Any) -> None:
    with pytest.raises(UniverseError, match="no 'symbols' list"):
        parse_exchange_info(doc)


def test_only_trading_symbols_are_selected_sorted() -> None:
    assert select_symbols(parse_exchange_info(DOC)) == ("BTCUSDT", "ETHBTC", "ETHFDUSD")


def test_quote_filter() -> None:
    infos = parse_exchange_info(DOC)
    assert select_symbols(infos, quotes=("USDT", "fdusd")) == ("BTCUSDT", "ETHFDUSD")
    assert select_symbols(infos, quotes=("BTC",)) == ("ETHBTC",)


def test_exclude_filter() -> None:
    assert select_symbols(parse_exchange_info(DOC), exclude=("btcusdt", "ETHBTC")) == ("ETHFDUSD",)


def test_shard_of_is_fixed_across_processes_and_versions() -> None:
    # blake2b, not hash(): these values must never change (the shards of running deployments depend on them).
    assert [shard_of(s, 7) for s in ("BTCUSDT", "ETHUSDT", "BNBUSDT")] == FIXED_SHARDS_OF_7
    assert shard_of("btcusdt", 7) == shard_of("BTCUSDT", 7)


FIXED_SHARDS_OF_7 = [5, 4, 6]


def test_two_shards_partition_1500_symbols() -> None:
    symbols = names(1500)
    first, second = in_shard(symbols, (0, 2)), in_shard(symbols, (1, 2))
    assert not set(first) & set(second)
    assert sorted(first + second) == symbols
    assert 600 < len(first) < 900  # both take a real share


@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_shards_cover_every_symbol_once(n: int) -> None:
    symbols = names(300, seed=n)
    shards = [in_shard(symbols, (i, n)) for i in range(n)]
    assert sorted(s for shard in shards for s in shard) == symbols


def test_a_new_listing_moves_no_other_symbol() -> None:
    symbols = names(1500)
    before = {s: shard_of(s, 4) for s in symbols}
    after = {s: shard_of(s, 4) for s in [*symbols, "NEWCOINUSDT"]}
    assert {s: after[s] for s in symbols} == before


def test_bad_shard_is_refused() -> None:
    with pytest.raises(ValueError):
        in_shard(["BTCUSDT"], (2, 2))
    with pytest.raises(ValueError):
        shard_of("BTCUSDT", 0)


def test_diff_streams() -> None:
    change = diff_streams(["a@depth20", "b@depth20"], ["b@depth20", "c@depth20"])
    assert (change.added, change.removed) == (("c@depth20",), ("a@depth20",))
    assert not diff_streams(["a"], ["a"])


def test_explicit_list_is_fixed_sorted_and_sharded() -> None:
    s = Settings(symbols="ethusdt,btcusdt", depth=10, speed="100ms")
    source = SymbolSource.from_settings(s)
    assert source.refresh_s is None
    assert source.streams() == ("btcusdt@depth10@100ms", "ethusdt@depth10@100ms")
    symbols = names(50)
    halves = [SymbolSource.from_settings(Settings(symbols=symbols, shard=f"{i}/2")).symbols() for i in (0, 1)]
    assert sorted(halves[0] + halves[1]) == symbols and not set(halves[0]) & set(halves[1])


def _source(doc: Any, **settings: Any) -> tuple[SymbolSource, list[str]]:
    calls: list[str] = []

    def fetch(url: str) -> Any:
        calls.append(url)
        if isinstance(doc, Exception):
            raise doc
        return doc

    s = Settings(symbols="all", rest_url="http://127.0.0.1:9/", symbols_refresh_s=60, **settings)
    return SymbolSource.from_settings(s, fetch=fetch), calls


def test_all_reads_exchange_info_each_time_and_says_what_changed() -> None:
    doc = info_doc(("BTCUSDT", "TRADING", "USDT"), ("ETHUSDT", "TRADING", "USDT"))
    source, calls = _source(doc, quote="usdt")
    assert source.refresh_s == 60
    assert source.streams() == ("btcusdt@depth20", "ethusdt@depth20")
    assert source.changes().added == ("btcusdt@depth20", "ethusdt@depth20")
    doc["symbols"][0]["status"] = "BREAK"  # delisted
    doc["symbols"].append({"symbol": "SOLUSDT", "status": "TRADING", "quoteAsset": "USDT"})  # listed
    assert source.streams() == ("ethusdt@depth20", "solusdt@depth20")
    change = source.changes()
    assert (change.added, change.removed) == (("solusdt@depth20",), ("btcusdt@depth20",))
    assert calls == ["http://127.0.0.1:9", "http://127.0.0.1:9"]


def test_all_with_filters_and_shard() -> None:
    entries = [(s, "TRADING", "USDT") for s in names(200)] + [("ETHBTC", "TRADING", "BTC")]
    excluded = entries[0][0]
    both = [_source(info_doc(*entries), quote="USDT", exclude=excluded, shard=f"{i}/2")[0].symbols() for i in (0, 1)]
    assert sorted(both[0] + both[1]) == sorted(s for s, _, _ in entries[1:200])


def test_nothing_left_after_the_filters_is_an_error() -> None:
    source, _ = _source(DOC, quote="USTD")
    with pytest.raises(UniverseError, match=r"5 symbols, 3 TRADING; none left with quote USTD"):
        source.streams()


def test_a_failed_fetch_is_a_universe_error() -> None:
    source, _ = _source(UniverseError("GET http://127.0.0.1:9/api/v3/exchangeInfo: HTTP 503 Service Unavailable"))
    with pytest.raises(PipelineError, match="HTTP 503"):
        source.streams()
