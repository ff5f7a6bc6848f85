"""The simulated market: symbol specifications, one random-walk book per symbol, and the books of a whole run.

Pure: no I/O, no clocks (loop time comes in as ``now``). Every value derives from ``(seed, symbol)`` through a
stable hash, never from ``hash()``. Amounts are integers in 1e-8 units (Binance renders spot prices and
quantities with 8 decimals). Speed matters (30k frames/s): levels are kept pre-rendered as bytes, each step
re-renders only the one to three levels it touches, and payloads are cached per depth until the next step.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from models.vocabulary import MAX_LEVELS

E8 = 100_000_000
TRADING = "TRADING"
NOT_TRADING = "BREAK"
"""The status of the listed symbols that do not trade (Binance's status of a suspended or delisting symbol)."""
"""One unit in 1e-8 units: ``tick_e8 = 1_000_000`` is a tick of 0.01."""

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
_QTY_POOL_SIZE = 512
_MAX_SPREAD_TICKS = 6
# With per-stream cadence a book moves at most every 50 ms, so a depth5 and a depth20 stream of the same
# symbol sent in the same tick (or two clients) carry the same book.
_MIN_BOOK_AGE_S = 0.05


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """Static description of one simulated symbol; amounts are integers in 1e-8 units.

    ``status`` is Binance's (``TRADING``, ``BREAK``, ...): only ``TRADING`` symbols are ever streamed.
    """

    symbol: str
    base_asset: str
    quote_asset: str
    tick_e8: int
    step_e8: int
    start_mid_e8: int
    levels: int
    status: str = TRADING

    @property
    def trading(self) -> bool:
        """True when the symbol trades (and is streamed)."""
        return self.status == TRADING


def derive_rng(seed: int, *parts: str) -> random.Random:
    """Return a ``random.Random`` seeded from ``seed`` and ``parts`` (stable across runs and processes)."""
    digest = hashlib.blake2b("|".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _format_e8(value_e8: int) -> str:
    sign = "-" if value_e8 < 0 else ""
    whole, frac = divmod(abs(value_e8), E8)
    return f"{sign}{whole}.{frac:08d}"


def _split_symbol(symbol: str) -> tuple[str, str]:
    """Split ``BTCUSDT`` into ``("BTC", "USDT")`` using the usual quote assets (fallback: last 4 letters)."""
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[:-4] or symbol, symbol[-4:]


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def make_spec(symbol: str, *, seed: int, allow_thin: bool = False) -> SymbolSpec:
    """Derive a plausible spec: known bases keep their usual price, others get a log-uniform one.

    Tick size keeps about 5 significant digits (0.01 for BTC, 1e-8 for 0.00001234-priced coins); the qty step
    shrinks as the price grows. ``allow_thin`` lets about 30 % of symbols have fewer than 20 levels per side.
    """
    upper = symbol.upper()
    base, quote = _split_symbol(upper)
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


def make_specs(symbols: Iterable[str], *, seed: int, allow_thin: bool = False) -> list[SymbolSpec]:
    """Build one spec per distinct symbol, keeping the given order."""
    unique = dict.fromkeys(s.upper() for s in symbols)
    return [make_spec(s, seed=seed, allow_thin=allow_thin) for s in unique]


def random_symbol_names(count: int, *, seed: int) -> list[str]:
    """Return ``count`` distinct plausible names such as ``XYZUSDT`` (deterministic for a seed)."""
    rng = derive_rng(seed, "names")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        base = "".join(rng.choice(_LETTERS) for _ in range(3 + int(rng.random() * 3)))
        quote = "USDT" if rng.random() < 0.85 else rng.choice(("FDUSD", "BTC", "USDC"))
        name = base + quote
        # The split must give back (base, quote): exchangeInfo's baseAsset/quoteAsset come from it.
        if base not in _QUOTES and name not in seen and _split_symbol(name) == (base, quote):
            seen.add(name)
            names.append(name)
    return names


def default_not_trading(random_symbols: int) -> int:
    """How many of ``random_symbols`` generated symbols are listed but not trading by default: about 1 %, at least
    one from 20 symbols on (none among fixed symbols, ``random_symbols`` 0)."""
    if random_symbols < 20:
        return 0
    return max(1, round(random_symbols / 100))


def pick_not_trading(symbols: Sequence[str], count: int, *, seed: int) -> frozenset[str]:
    """Choose ``count`` of ``symbols`` (all if fewer) by a stable hash of ``(seed, symbol)``: the same seed and
    names always give the same choice, whatever their order."""

    def rank(symbol: str) -> bytes:
        return hashlib.blake2b(f"{seed}|status|{symbol}".encode(), digest_size=8).digest()

    return frozenset(sorted(dict.fromkeys(symbols), key=rank)[:count])


def _symbol_info(spec: SymbolSpec) -> dict[str, Any]:
    max_qty_e8 = min(spec.step_e8 * 10**9, 9_000_000_000 * E8)
    return {
        "symbol": spec.symbol,
        "status": spec.status,
        "baseAsset": spec.base_asset,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote_asset,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": spec.trading,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": _format_e8(spec.tick_e8),
                "maxPrice": _format_e8(spec.tick_e8 * 10**8),
                "tickSize": _format_e8(spec.tick_e8),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": _format_e8(spec.step_e8),
                "maxQty": _format_e8(max_qty_e8),
                "stepSize": _format_e8(spec.step_e8),
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


def _render_amount(value_e8: int) -> bytes:
    return b"%d.%08d" % divmod(value_e8, E8)


def render_payload(last_update_id: int, bids: list[bytes], asks: list[bytes]) -> bytes:
    """Join rendered levels into ``{"lastUpdateId":..,"bids":[..],"asks":[..]}`` (Binance's compact layout)."""
    return b'{"lastUpdateId":%d,"bids":[%b],"asks":[%b]}' % (last_update_id, b",".join(bids), b",".join(asks))


class SymbolBook:
    """One symbol's synthetic book; book ``n`` (after ``n`` calls to ``advance``) depends only on (seed, symbol, n).

    Bid prices (in ticks) are descending, ask prices ascending, best bid < best ask, between 1 and 20 levels
    per side; ``last_update_id`` grows by irregular steps of 1 to 50.
    """

    __slots__ = ("_ask_lv", "_ask_px", "_bid_lv", "_bid_px", "_cache", "_qty", "_rng", "last_update_id", "n", "spec")

    def __init__(self, spec: SymbolSpec, *, seed: int) -> None:
        self.spec = spec
        self._rng = derive_rng(seed, "book", spec.symbol)
        self._qty = self._qty_pool()
        self.n = 0
        self.last_update_id = 1_000_000_000 + int(self._rng.random() * 9_000_000_000)
        mid = spec.start_mid_e8 // spec.tick_e8
        self._bid_px: list[int] = [mid]
        self._ask_px: list[int] = [mid + 1 + int(self._rng.random() ** 3 * 3)]
        self._bid_lv = [self.render_level(mid, self._pick_qty())]
        self._ask_lv = [self.render_level(self._ask_px[0], self._pick_qty())]
        self._cache: dict[int, bytes] = {}
        self._refill(self._bid_px, self._bid_lv, -1)
        self._refill(self._ask_px, self._ask_lv, 1)

    def _qty_pool(self) -> list[bytes]:
        """Log-normal notionals around 2000 quote units, rounded to the step (never zero)."""
        spec, rng = self.spec, self._rng
        price = spec.start_mid_e8 / E8
        pool = []
        for _ in range(_QTY_POOL_SIZE):
            notional = 2000.0 * rng.lognormvariate(0.0, 1.6)
            units = max(1, round(notional / price / (spec.step_e8 / E8)))
            pool.append(_render_amount(units * spec.step_e8))
        return pool

    def _pick_qty(self) -> bytes:
        return self._qty[int(self._rng.random() * _QTY_POOL_SIZE)]

    def render_level(self, price_ticks: int, qty: bytes) -> bytes:
        """Render one level as ``["<price>","<qty>"]`` with 8 decimals."""
        return b'["%b","%b"]' % (_render_amount(price_ticks * self.spec.tick_e8), qty)

    def _gap(self) -> int:
        return 1 + int(self._rng.random() ** 3 * 4)

    def _refill(self, px: list[int], lv: list[bytes], direction: int) -> None:
        """Append deeper levels up to the target depth; bids stop at one tick above zero."""
        while len(px) < self.spec.levels:
            price = px[-1] + direction * self._gap()
            if price < 1:
                return
            px.append(price)
            lv.append(self.render_level(price, self._pick_qty()))

    def advance(self) -> None:
        """Apply one to three random changes (qty update, cancel, insert, trade, improve) and bump the id."""
        rng = self._rng
        for _ in range(1 + int(rng.random() ** 2 * 3)):
            if rng.random() < 0.5:
                self._change(self._bid_px, self._bid_lv, -1, rng.random())
            else:
                self._change(self._ask_px, self._ask_lv, 1, rng.random())
        self.last_update_id += 1 + int(rng.random() ** 3 * 50)
        self.n += 1
        self._cache.clear()

    def _change(self, px: list[int], lv: list[bytes], direction: int, u: float) -> None:
        rng = self._rng
        spread = self._ask_px[0] - self._bid_px[0]
        if spread > _MAX_SPREAD_TICKS or u >= 0.9:
            if spread > 1:  # improve: a new best level inside the spread moves the mid towards the other side
                price = px[0] - direction * (1 + int(rng.random() * (spread - 1)))
                px.insert(0, price)
                lv.insert(0, self.render_level(price, self._pick_qty()))
        elif u < 0.55:
            i = int(rng.random() ** 2 * len(px))
            lv[i] = self.render_level(px[i], self._pick_qty())
        elif u < 0.7 and len(px) > 1:  # cancel a level anywhere
            i = int(rng.random() * len(px))
            del px[i], lv[i]
        elif u < 0.8:  # insert inside a gap of more than one tick
            i = int(rng.random() * len(px))
            if i + 1 < len(px) and abs(px[i] - px[i + 1]) > 1:
                price = px[i] + direction
                px.insert(i + 1, price)
                lv.insert(i + 1, self.render_level(price, self._pick_qty()))
        elif len(px) > 1:  # trade: the best level is consumed and the book moves away
            del px[0], lv[0]
        del px[self.spec.levels :], lv[self.spec.levels :]
        self._refill(px, lv, direction)

    @property
    def best_bid_ticks(self) -> int:
        """Best bid price in ticks."""
        return self._bid_px[0]

    @property
    def best_ask_ticks(self) -> int:
        """Best ask price in ticks."""
        return self._ask_px[0]

    def top_levels(self, depth: int) -> tuple[list[bytes], list[bytes]]:
        """Return the rendered top ``depth`` bid and ask levels (copies, safe to modify)."""
        return self._bid_lv[:depth], self._ask_lv[:depth]

    def payload(self, depth: int) -> bytes:
        """Return the current book as a partial-depth payload with at most ``depth`` levels per side."""
        cached = self._cache.get(depth)
        if cached is None:
            cached = render_payload(self.last_update_id, self._bid_lv[:depth], self._ask_lv[:depth])
            self._cache[depth] = cached
        return cached


def book_at(spec: SymbolSpec, *, seed: int, n: int) -> SymbolBook:
    """Return the ``n``-th book of ``spec.symbol`` for ``seed`` (steps a fresh book ``n`` times)."""
    book = SymbolBook(spec, seed=seed)
    for _ in range(n):
        book.advance()
    return book


def update_ids(symbol: str, *, seed: int, first: int, last: int) -> list[int]:
    """The ``lastUpdateId``s the book of ``symbol`` takes for ``seed`` from ``first`` to ``last``: each one is sent
    (once per connection subscribed to it), since a book only moves when its stream is sent."""
    book = SymbolBook(make_spec(symbol, seed=seed), seed=seed)
    while book.last_update_id < first:
        book.advance()
    ids = []
    while book.last_update_id <= last:
        ids.append(book.last_update_id)
        book.advance()
    return ids


class Market:
    """The books of all simulated symbols, shared by every connection and created on first use.

    Clients see the same ``lastUpdateId`` for the same book, and ``lastUpdateId`` keeps increasing across reconnects.
    """

    def __init__(self, specs: Sequence[SymbolSpec], *, seed: int) -> None:
        self.specs = {spec.symbol: spec for spec in specs}
        self._seed = seed
        self._books: dict[str, SymbolBook] = {}
        self._advanced_at: dict[str, float] = {}

    def book(self, symbol: str) -> SymbolBook:
        """Return the book of ``symbol`` (upper-case, must be in ``specs``)."""
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = SymbolBook(self.specs[symbol], seed=self._seed)
        return book

    def refresh(self, book: SymbolBook, now: float) -> None:
        """Advance ``book`` one step unless it already moved within the last 50 ms (loop time ``now``)."""
        symbol = book.spec.symbol
        if now - self._advanced_at.get(symbol, -1.0) >= _MIN_BOOK_AGE_S:
            book.advance()
            self._advanced_at[symbol] = now
