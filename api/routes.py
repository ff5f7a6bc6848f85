"""The `/v1` HTTP endpoints: parse and check parameters (api.params), then stream what api.queries and api.books
read. Every error is a problem+json body (api.problems); nothing here writes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse

from api import queries, schemas
from api.books import Book, iter_books
from api.books import book_at as find_book
from api.context import ApiContext, get_ctx
from api.params import BookKey, check_limit, check_range, decode_cursor, encode_cursor, parse_symbol, parse_time
from api.problems import PROBLEM_JSON, ProblemError
from api.streaming import json_items, primed
from models.live import rfc3339
from models.vocabulary import WINDOWS_S

__all__ = ["router"]

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Problem, "content": {PROBLEM_JSON: {}}} for code in (400, 401, 404, 503)
}
router = APIRouter(prefix="/v1", responses=_PROBLEMS)

Ctx = Annotated[ApiContext, Depends(get_ctx)]
SymbolQ = Annotated[str, Query(description="e.g. BTCUSDT (any case)")]
TimeQ = Annotated[str, Query(description="RFC 3339, e.g. 2026-11-30T06:00:00Z")]
DEFAULT_LIMIT = 100


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _known(ctx: ApiContext, symbol: str) -> str:
    return ctx.symbols.require(parse_symbol(symbol))


def _limit(ctx: ApiContext, limit: int | None) -> int:
    if limit is None:
        return min(DEFAULT_LIMIT, ctx.max_limit)
    return check_limit(limit, max_limit=ctx.max_limit)


def _range(ctx: ApiContext, start: str, end: str) -> tuple[datetime, datetime]:
    t0, t1 = parse_time(start, name="start"), parse_time(end, name="end")
    check_range(t0, t1, max_range_s=ctx.max_range_s)
    return t0, t1


@router.get("/symbols", response_model=schemas.SymbolsPage)
def symbols(ctx: Ctx) -> Response:
    """Every stored symbol with its first and last `received_at` and its number of books (kept for a few seconds)."""
    return _json({"items": ctx.symbols.stats()})


@router.get("/books/latest", response_model=schemas.BookOut)
def latest_book(ctx: Ctx, symbol: SymbolQ) -> Response:
    """The newest stored book of `symbol` (PostgreSQL's, else the newest archived one)."""
    sym = _known(ctx, symbol)
    book = find_book(ctx.engine, symbol=sym, at=None, archive_url=ctx.archive_url)
    if book is None:
        raise ProblemError(404, "No book", f"no book of {sym} is stored")
    return _json(_book_json(book))


@router.get("/books/at", response_model=schemas.BookOut)
def book_at(ctx: Ctx, symbol: SymbolQ, t: TimeQ) -> Response:
    """The book in force at instant `t`: the last one received at or before it, from PostgreSQL or, for days
    retention dropped, from the archive."""
    sym, at = _known(ctx, symbol), parse_time(t, name="t")
    book = find_book(ctx.engine, symbol=sym, at=at, archive_url=ctx.archive_url)
    if book is None:
        raise ProblemError(404, "No book", f"no book of {sym} was received at or before {rfc3339(at)}")
    return _json(_book_json(book))


@router.get("/health", response_model=schemas.HealthOut)
def health(ctx: Ctx) -> Response:
    """Feed and queue health in the shape of `bookfeed status --json` (kept for a few seconds): `state` healthy,
    degraded or down with the `problems` found; the Celery queues, unacknowledged tasks and the outbox (batches
    not yet committed) from one Redis round trip; each symbol's newest stored book's age from one SQL query.
    `feeds` and `workers_alive` are null here (`bookfeed status` counts them). Always 200: an unreachable service
    is a problem in the body."""
    if ctx.health is None:
        raise ProblemError(503, "No health probe", "this API was built without one")
    return _json(ctx.health.read())


def _book_json(book: Book) -> dict[str, Any]:
    return {
        "symbol": book.symbol,
        "received_at": rfc3339(book.received_at),
        "last_update_id": book.last_update_id,
        "bids": book.bids,
        "asks": book.asks,
    }


class _Page:
    """At most `limit` books of `books` (which yields up to limit + 1); a next cursor when the extra one came."""

    def __init__(self, books: Iterator[Book], limit: int) -> None:
        self._source, self._books, self._limit = books, primed(books), limit
        self._last: BookKey | None = None
        self.more = False

    def items(self) -> Iterator[dict[str, Any]]:
        try:
            for sent, book in enumerate(self._books):
                if sent == self._limit:
                    self.more = True
                    break
                self._last = (book.received_at, book.last_update_id)
                yield _book_json(book)
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()  # the server-side cursor goes back to the pool now, not when collected

    def tail(self) -> dict[str, Any]:
        return {"next_cursor": encode_cursor(self._last) if self.more and self._last else None}


@router.get("/books", response_model=schemas.BooksPage)
def books(
    ctx: Ctx,
    symbol: SymbolQ,
    start: TimeQ,
    end: TimeQ,
    limit: Annotated[
        int | None, Query(description="books per page (default 100, at most BOOKFEED_API_MAX_LIMIT)")
    ] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> StreamingResponse:
    """Books of `symbol` received in [start, end), oldest first (by received_at, then last_update_id), a page at a
    time: pass `next_cursor` back as `cursor` until it is null. Hot (PostgreSQL) and archived days alike."""
    sym = _known(ctx, symbol)
    t0, t1 = _range(ctx, start, end)
    n = _limit(ctx, limit)
    after = decode_cursor(cursor) if cursor else None
    found = iter_books(ctx.engine, symbol=sym, start=t0, end=t1, after=after, limit=n + 1, archive_url=ctx.archive_url)
    page = _Page(found, n)
    return json_items(page.items(), tail=page.tail)


@router.get("/metrics", response_model=schemas.MetricsPage)
def metrics(ctx: Ctx, symbol: SymbolQ, start: TimeQ, end: TimeQ) -> StreamingResponse:
    """Per book of `symbol` in [start, end): best bid/ask and spread (exact), bid/ask VWAP over all levels and
    price = (bid_vwap + ask_vwap) / 2 (float64), oldest first."""
    sym = _known(ctx, symbol)
    t0, t1 = _range(ctx, start, end)
    return json_items(primed(queries.metrics(ctx.engine, symbol=sym, start=t0, end=t1)), head={"symbol": sym})


@router.get("/averages", response_model=schemas.AveragesPage)
def averages(
    ctx: Ctx,
    symbol: SymbolQ,
    start: TimeQ,
    end: TimeQ,
    window: Annotated[int, Query(description="window size in seconds: 30 or 60")],
) -> StreamingResponse:
    """The 30 s or 1 min average prices of `symbol` for windows starting in [start, end); `complete` is false for a
    window the feed may not have seen whole."""
    if window not in WINDOWS_S:
        raise ProblemError(400, "Invalid request", f"window must be one of {', '.join(map(str, WINDOWS_S))}")
    sym = _known(ctx, symbol)
    t0, t1 = _range(ctx, start, end)
    rows = queries.averages(ctx.engine, symbol=sym, window_s=window, start=t0, end=t1)
    return json_items(primed(rows), head={"symbol": sym, "window": window})


@router.get("/gaps", response_model=schemas.GapsPage)
def gaps(
    ctx: Ctx,
    symbol: Annotated[str | None, Query(description="only this symbol's gaps")] = None,
    start: Annotated[str | None, Query(description="RFC 3339; default: end - BOOKFEED_API_MAX_RANGE_S")] = None,
    end: Annotated[str | None, Query(description="RFC 3339; default: now")] = None,
) -> StreamingResponse:
    """Intervals in which the feed may have missed books (feed_gaps) overlapping [start, end), oldest first."""
    sym = parse_symbol(symbol) if symbol else None
    t1 = parse_time(end, name="end") if end else datetime.now(UTC)
    t0 = parse_time(start, name="start") if start else t1 - timedelta(seconds=ctx.max_range_s)
    check_range(t0, t1, max_range_s=ctx.max_range_s)
    return json_items(primed(queries.gaps(ctx.engine, symbol=sym, start=t0, end=t1)))


@router.get("/rejected", response_model=schemas.RejectedPage)
def rejected(
    ctx: Ctx,
    since: TimeQ,
    limit: Annotated[int | None, Query(description="default 100, at most BOOKFEED_API_MAX_LIMIT")] = None,
) -> StreamingResponse:
    """Frames refused (rejected_messages) received at or after `since`, oldest first, with the reason and the raw
    text (cut to its first KiB when it was too large)."""
    t = parse_time(since, name="since")
    n = _limit(ctx, limit)
    return json_items(primed(queries.rejected(ctx.engine, since=t, limit=n)))
