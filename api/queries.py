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
    "gaps",
    "metrics",
    "rejected",
]

_FETCH = 500  # rows per server-side FETCH


def _stream(engine: Engine, sql: str, params: Mapping[str, Any]) -> Iterator[RowMapping]:
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_FETCH).execute(text(sql), dict(params))
        for row in result:
            yield row._mapping


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
