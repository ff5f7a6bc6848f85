"""The live-push contract between workers (publisher, workers/live.py) and the API's websocket (api/live.py): the Redis
pub/sub channel and the shape of one pushed book's metrics. Pure: no I/O.

One message on the channel is a JSON array of items, one per book a batch stored; each item is what `WS /v1/live`
sends for that book: `{exchange, symbol, received_at, last_update_id, depth, best_bid, best_ask, spread, bid_vwap,
ask_vwap, price, crossed}` with times as RFC 3339 (`...Z`, microseconds, as PostgreSQL stores them) and best
prices and spread as exact decimal strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from models.book import BookSnapshot
from models.columnar import Columns
from models.encoding import decimal_text
from models.metrics import BookMetrics

__all__ = ["LIVE_CHANNEL", "live_channel", "live_item", "live_items", "ns_to_rfc3339", "rfc3339"]

LIVE_CHANNEL = "bookfeed:live"


def live_channel(key_prefix: str) -> str:
    """The channel under a deployment's broker key prefix (BOOKFEED_BROKER_KEY_PREFIX)."""
    return key_prefix + LIVE_CHANNEL


def rfc3339(t: datetime) -> str:
    """`2023-11-14T22:13:20.123456Z`: UTC, always six fractional digits. `t` must be timezone-aware."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ns_to_rfc3339(ns: int) -> str:
    """A receive time in ns since the epoch, truncated to the microsecond as workers.storage stores it."""
    secs, rem = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{rem // 1000:06d}Z"


def _dec(v: Decimal | None) -> str | None:
    # Fixed-point like PostgreSQL's numeric output: str() would write 1E-8 for a tiny spread.
    return None if v is None else format(v, "f")


def live_item(exchange: str, book: BookSnapshot, metrics: BookMetrics) -> dict[str, Any]:
    """One stored book as pushed: its identity and metrics (decimals as the strings the book_metrics view gives)."""
    return _item(
        exchange,
        book.symbol,
        book.received_ns,
        book.last_update_id,
        book.depth,
        book.bid_prices[0] if book.bid_prices else None,
        book.ask_prices[0] if book.ask_prices else None,
        _dec(metrics.spread),
        metrics.bid_vwap,
        metrics.ask_vwap,
        metrics.price,
        metrics.crossed,
    )


def live_items(exchange: str, cols: Columns) -> list[dict[str, Any]]:
    """`live_item` of each book the batch fast path took (models.columnar): the same items."""
    rows = zip(
        cols.symbol.to_pylist(),
        cols.received_ns.tolist(),
        cols.last_update_id.tolist(),
        cols.depth.tolist(),
        cols.scale.tolist(),
        cols.best_bid.tolist(),
        cols.best_ask.tolist(),
        cols.bid_vwap.tolist(),
        cols.ask_vwap.tolist(),
        cols.price.tolist(),
        cols.crossed.tolist(),
        strict=True,
    )
    return [
        _item(
            exchange,
            symbol,
            ns,
            luid,
            depth,
            decimal_text(bid, scale),
            decimal_text(ask, scale),
            decimal_text(ask - bid, scale),
            bid_vwap,
            ask_vwap,
            price,
            crossed,
        )
        for symbol, ns, luid, depth, scale, bid, ask, bid_vwap, ask_vwap, price, crossed in rows
    ]


def _item(
    exchange: str,
    symbol: str,
    received_ns: int,
    last_update_id: int,
    depth: int,
    best_bid: str | None,
    best_ask: str | None,
    spread: str | None,
    bid_vwap: float | None,
    ask_vwap: float | None,
    price: float | None,
    crossed: bool,
) -> dict[str, Any]:
    """The one shape of a pushed item, whichever parse path made the book."""
    return {
        "exchange": exchange,
        "symbol": symbol,
        "received_at": ns_to_rfc3339(received_ns),
        "last_update_id": last_update_id,
        "depth": depth,
        "best_bid": best_bid,
        "best_ask": best_ask,
        "spread": spread,
        "bid_vwap": bid_vwap,
        "ask_vwap": ask_vwap,
        "price": price,
        "crossed": crossed,
    }
