"""Symbol specifications for the simulator: names, tick and step sizes, price scales.

Pure: no I/O. Every value derives from ``(seed, symbol)`` through a stable hash, never from ``hash()``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

E8 = 100_000_000
"""Binance renders spot prices and quantities with 8 decimals; all amounts here are integers in 1e-8."""

DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
MAX_LEVELS = 20

# Longest first, so that "FDUSD" wins over "USD"-like suffixes.
_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")
_PRESET_PRICES = {
    "BTC": 60_000.0,
    "ETH": 3_000.0,
    "BNB": 600.0,
    "SOL": 150.0,
    "XRP": 0.6,
    "ADA": 0.45,
    "DOGE": 0.15,
    "TRX": 0.12,
    "SHIB": 0.00002345,
    "PEPE": 0.00001234,
}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """Static description of one simulated symbol; amounts are integers in 1e-8 units."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_e8: int
    step_e8: int
    start_mid_e8: int
    levels: int


def derive_rng(seed: int, *parts: str) -> random.Random:
    """Return a ``random.Random`` seeded from ``seed`` and ``parts`` (stable across runs and processes)."""
    digest = hashlib.blake2b("|".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def format_e8(value_e8: int) -> str:
    """Render an integer amount in 1e-8 units as Binance does, e.g. 4006998000000 -> "40069.98000000"."""
    sign = "-" if value_e8 < 0 else ""
    whole, frac = divmod(abs(value_e8), E8)
    return f"{sign}{whole}.{frac:08d}"


def split_symbol(symbol: str) -> tuple[str, str]:
    """Split ``BTCUSDT`` into ``("BTC", "USDT")`` using the usual quote assets (fallback: last 4 letters)."""
    upper = symbol.upper()
    for quote in _QUOTES:
        if upper.endswith(quote) and len(upper) > len(quote):
            return upper[: -len(quote)], quote
    return upper[:-4] or upper, upper[-4:]


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def make_spec(symbol: str, *, seed: int, allow_thin: bool = False) -> SymbolSpec:
    """Derive a plausible spec: known bases keep their usual price, others get a log-uniform one.

    Tick size keeps about 5 significant digits (0.01 for BTC, 1e-8 for 0.00001234-priced coins); the qty step
    shrinks as the price grows. ``allow_thin`` lets about 30 % of symbols have fewer than 20 levels per side.
    """
    upper = symbol.upper()
    base, quote = split_symbol(upper)
    rng = derive_rng(seed, "spec", upper)
    preset = _PRESET_PRICES.get(base)
    price = preset * (1 + rng.uniform(-0.05, 0.05)) if preset else 10 ** rng.uniform(-5.0, 5.0)
    exponent = math.floor(math.log10(price))
    tick_e8 = 10 ** (_clamp(exponent - 4, -8, -2) + 8)
    step_e8 = 10 ** (_clamp(-(exponent + 1), -8, 0) + 8)
    start_mid_e8 = max(1000, round(price * E8 / tick_e8)) * tick_e8
    levels = MAX_LEVELS
    if allow_thin and rng.random() < 0.3:
        levels = 1 + int(rng.random() * (MAX_LEVELS - 1))
    return SymbolSpec(upper, base, quote, tick_e8, step_e8, start_mid_e8, levels)


def random_symbol_names(count: int, *, seed: int) -> list[str]:
    """Return ``count`` distinct plausible names such as ``XYZUSDT`` (deterministic for a seed)."""
    rng = derive_rng(seed, "names")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        base = "".join(rng.choice(_LETTERS) for _ in range(3 + int(rng.random() * 3)))
        quote = "USDT" if rng.random() < 0.85 else rng.choice(("FDUSD", "BTC", "USDC"))
        name = base + quote
        if base not in _QUOTES and name not in seen:
            seen.add(name)
            names.append(name)
    return names


def make_specs(symbols: Iterable[str], *, seed: int, allow_thin: bool = False) -> list[SymbolSpec]:
    """Build one spec per distinct symbol, keeping the given order."""
    unique = dict.fromkeys(s.upper() for s in symbols)
    return [make_spec(s, seed=seed, allow_thin=allow_thin) for s in unique]


def _symbol_info(spec: SymbolSpec) -> dict[str, Any]:
    max_qty_e8 = min(spec.step_e8 * 10**9, 9_000_000_000 * E8)
    return {
        "symbol": spec.symbol,
        "status": "TRADING",
        "baseAsset": spec.base_asset,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote_asset,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": format_e8(spec.tick_e8),
                "maxPrice": format_e8(spec.tick_e8 * 10**8),
                "tickSize": format_e8(spec.tick_e8),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": format_e8(spec.step_e8),
                "maxQty": format_e8(max_qty_e8),
                "stepSize": format_e8(spec.step_e8),
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
    }


def exchange_info(specs: Sequence[SymbolSpec], *, server_time_ms: int) -> dict[str, Any]:
    """Build a ``GET /api/v3/exchangeInfo`` document in Binance's shape for ``specs``."""
    return {
        "timezone": "UTC",
        "serverTime": server_time_ms,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": [_symbol_info(spec) for spec in specs],
    }
