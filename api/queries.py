"""Read-only SQL of the API, over the public views only (the reader role sees nothing else). Keyword-only functions
taking the engine; rows come back as JSON-ready dicts (times RFC 3339, decimals as PostgreSQL's exact text).
Streaming functions use a server-side cursor, so a response of any length holds one batch of rows in memory."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, RowMapping, text

from models.live import rfc3339

__all__ = [
    "averages",
    "book_at",
    "gaps",
    "latest_book",
    "metrics",
    "rejected",
    "symbol_stats",
]

_FETCH = 500  # rows per server-side FETCH

_BOOK_COLUMNS = (
    "symbol, received_at, last_update_id, bid_prices::text[] AS bp, bid_quantities::text[] AS bq, "
    "ask_prices::text[] AS ap, ask_quantities::text[] AS aq"
)


def _stream(engine: Engine, sql: str, params: Mapping[str, Any]) -> Iterator[RowMapping]:
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_FETCH).execute(text(sql), dict(params))
        for row in result:
            yield row._mapping


def book_json(row: RowMapping) -> dict[str, Any]:
    """`{symbol, received_at, last_update_id, bids: [[price, qty], ...], asks}` from an order_books row."""
    return {
        "symbol": row["symbol"],
        "received_at": rfc3339(row["received_at"]),
        "last_update_id": row["last_update_id"],
        "bids": [list(lv) for lv in zip(row["bp"], row["bq"], strict=True)],
        "asks": [list(lv) for lv in zip(row["ap"], row["aq"], strict=True)],
    }


def symbol_stats(engine: Engine) -> list[dict[str, Any]]:
    """Each stored symbol with its first and last received_at and its number of books (a scan of every book)."""
    sql = (
        "SELECT symbol, min(received_at) AS first, max(received_at) AS last, count(*) AS books "
        "FROM order_books GROUP BY symbol ORDER BY symbol"
    )
    with engine.connect() as conn:
        rows = conn.execute(text(sql)).mappings().all()
    return [
        {"symbol": r["symbol"], "first": rfc3339(r["first"]), "last": rfc3339(r["last"]), "books": r["books"]}
        for r in rows
    ]


def _one_book(engine: Engine, where: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
    sql = (
        f"SELECT {_BOOK_COLUMNS} FROM order_books WHERE symbol = :symbol {where} "
        "ORDER BY received_at DESC, last_update_id DESC LIMIT 1"
    )
    with engine.connect() as conn:
        row = conn.execute(text(sql), dict(params)).mappings().first()
    return None if row is None else book_json(row)


def latest_book(engine: Engine, *, symbol: str) -> dict[str, Any] | None:
    """The newest stored book of `symbol`, or None."""
    return _one_book(engine, "", {"symbol": symbol})


def book_at(engine: Engine, *, symbol: str, at: datetime) -> dict[str, Any] | None:
    """The book in force at `at`: the last one received at or before it, or None."""
    return _one_book(engine, "AND received_at <= :at", {"symbol": symbol, "at": at})


def metrics(engine: Engine, *, symbol: str, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
    """book_metrics rows of `symbol` with start <= received_at < end, in (received_at, last_update_id) order."""
    sql = (
        "SELECT received_at, last_update_id, depth, best_bid::text AS best_bid, best_ask::text AS best_ask, "
        "spread::text AS spread, bid_vwap, ask_vwap, price, crossed FROM book_metrics "
        "WHERE symbol = :symbol AND received_at >= :start AND received_at < :end "
        "ORDER BY received_at, last_update_id"
    )
    for r in _stream(engine, sql, {"symbol": symbol, "start": start, "end": end}):
        yield {**r, "received_at": rfc3339(r["received_at"])}


def averages(engine: Engine, *, symbol: str, window_s: int, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
    """price_averages windows of `symbol` and size `window_s` starting in [start, end), oldest first."""
    sql = (
        "SELECT window_start, window_end, avg_price, samples, complete, computed_at FROM price_averages "
        "WHERE symbol = :symbol AND window_seconds = :window_s AND window_start >= :start AND window_start < :end "
        "ORDER BY window_start"
    )
    params = {"symbol": symbol, "window_s": window_s, "start": start, "end": end}
    for r in _stream(engine, sql, params):
        yield {
            **r,
            "window_start": rfc3339(r["window_start"]),
            "window_end": rfc3339(r["window_end"]),
            "computed_at": rfc3339(r["computed_at"]),
        }


def gaps(engine: Engine, *, symbol: str | None, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
    """feed_gaps intervals overlapping [start, end) (of `symbol`, or of every symbol), oldest first."""
    sql = (
        "SELECT exchange, symbol, stream, start_at, end_at, reason FROM feed_gaps "
        "WHERE end_at >= :start AND start_at < :end AND (CAST(:symbol AS text) IS NULL OR symbol = :symbol) "
        "ORDER BY start_at, symbol, stream"
    )
    for r in _stream(engine, sql, {"symbol": symbol, "start": start, "end": end}):
        yield {**r, "start_at": rfc3339(r["start_at"]), "end_at": rfc3339(r["end_at"])}


def rejected(engine: Engine, *, since: datetime, limit: int) -> Iterator[dict[str, Any]]:
    """rejected_messages received at or after `since`, oldest first, at most `limit`."""
    sql = (
        "SELECT received_at, reason, raw, exchange, batch_id FROM rejected_messages "
        "WHERE received_at >= :since ORDER BY received_at LIMIT :limit"
    )
    for r in _stream(engine, sql, {"since": since, "limit": limit}):
        yield {**r, "received_at": rfc3339(r["received_at"])}
