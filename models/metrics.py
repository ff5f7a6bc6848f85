"""Per-book metrics and window arithmetic. Pure: no I/O, no clock; `now` and sizes arrive as arguments.

Exactness: best bid/ask and spread are exact `Decimal`s of the strings sent. VWAPs and price are float64: each
price and quantity is rounded once to float (relative error <= u = 2^-53), each product adds u, and a sum of n positive
terms adds at most (n-1)u, so a VWAP over n <= 20 levels is within (2n + 3)u ~ 4.8e-15 relative of the exact value and
`price` within 5e-15 (tests/unit/models/test_metrics.py checks <= 1e-12 against 80-digit Decimal arithmetic).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Context, Decimal

from models.book import BookSnapshot

__all__ = [
    "BookMetrics",
    "book_metrics",
    "closed_range",
    "vwap",
    "window_start",
]

# 20 integer + 20 fractional digits on either side: 64 digits keep every difference exact.
_EXACT = Context(prec=64)


@dataclass(frozen=True, slots=True)
class BookMetrics:
    best_bid: Decimal | None
    best_ask: Decimal | None
    spread: Decimal | None  # best_ask - best_bid, exact; negative or zero when crossed
    bid_vwap: float | None
    ask_vwap: float | None
    price: float | None  # (bid_vwap + ask_vwap) / 2
    crossed: bool  # best_bid >= best_ask: stored, flagged, left out of averages


def vwap(prices: Sequence[str], quantities: Sequence[str]) -> float | None:
    """Volume-weighted average price of one side, sum(price * qty) / sum(qty) over every level given, in float64.

    None when the side is empty. Inputs are validated positive decimal strings (see models.book.parse_frame).
    """
    if not prices:
        return None
    fp, fq = tuple(map(float, prices)), tuple(map(float, quantities))
    if len(fp) != len(fq):
        raise ValueError("prices and quantities differ in length")
    return _vwap(fp, fq)


def _vwap(fp: Sequence[float], fq: Sequence[float]) -> float | None:
    # Left to right from 0, as a loop would add them (Python 3.11's sum of floats is plain addition).
    if not fp:
        return None
    notional: float = sum(map(operator.mul, fp, fq))
    return notional / sum(fq)


def book_metrics(book: BookSnapshot) -> BookMetrics:
    """best_bid = highest bid (first level), best_ask = lowest ask (first level), spread = best_ask - best_bid exactly,
    bid/ask VWAP over all levels sent, price = (bid_vwap + ask_vwap) / 2. Metrics of an empty side are None."""
    best_bid = Decimal(book.bid_prices[0]) if book.bid_prices else None
    best_ask = Decimal(book.ask_prices[0]) if book.ask_prices else None
    n = book.numbers()  # the floats parse_frame made, when it made this book
    if n is not None:
        bid_vwap, ask_vwap = _vwap(n.bid_prices, n.bid_quantities), _vwap(n.ask_prices, n.ask_quantities)
    else:
        bid_vwap, ask_vwap = vwap(book.bid_prices, book.bid_quantities), vwap(book.ask_prices, book.ask_quantities)
    if best_bid is None or best_ask is None or bid_vwap is None or ask_vwap is None:
        return BookMetrics(best_bid, best_ask, None, bid_vwap, ask_vwap, None, crossed=False)
    spread = _EXACT.subtract(best_ask, best_bid)
    return BookMetrics(best_bid, best_ask, spread, bid_vwap, ask_vwap, (bid_vwap + ask_vwap) / 2.0, crossed=spread <= 0)


def window_start(ts_s: float, window_s: int) -> int:
    """Start of the epoch-aligned window of `window_s` seconds that contains `ts_s`."""
    return int(ts_s // window_s) * window_s


def closed_range(*, from_s: float, now_s: float, window_s: int, grace_s: float) -> tuple[int, int]:
    """[lo, hi) in epoch seconds covering every `window_s` window that overlaps [from_s, ...) and ended at least
    `grace_s` before `now_s` (lo == hi when there is none). Both ends are window boundaries, so the same inputs
    always give the same windows."""
    hi = window_start(now_s - grace_s, window_s)
    return min(window_start(from_s, window_s), hi), hi
