"""Books out of bookfeed, hot and cold: `iter_books` streams one symbol's order books over a time range from the
`order_books` view (a server-side cursor: constant memory) and, when an archive is given, from the cold Parquet
archive for the days retention dropped from PostgreSQL. Read-only; reads only the public view, never its tables."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, text

from api.archive import ArchiveReader, ColdRow
from models.coldstore import day_bounds

__all__ = ["Book", "BookKey", "book_at", "iter_books"]

BookKey = tuple[datetime, int]  # (received_at, last_update_id): the order of iter_books and its keyset cursor

_FETCH_ROWS = 1_000  # rows per round trip of the server-side cursor

# Prices and quantities cast to text[]: PostgreSQL's own rendering keeps the scale as stored ("40069.98000000"),
# which psycopg2's Decimal would turn into "1E-8" for 0.00000001.
_COLUMNS = """received_at, last_update_id, bid_prices::text[], bid_quantities::text[],
       ask_prices::text[], ask_quantities::text[]"""
_WHERE = "symbol = :symbol AND received_at >= :start AND received_at < :end"
_ORDER = "ORDER BY received_at, last_update_id"
_HOT_SQL = text(f"SELECT {_COLUMNS} FROM order_books WHERE {_WHERE} {_ORDER}")
_HOT_AFTER_SQL = text(
    f"SELECT {_COLUMNS} FROM order_books WHERE {_WHERE}"
    f" AND (received_at, last_update_id) > (:after_t, :after_id) {_ORDER}"
)
_HAS_DAY_SQL = text(f"SELECT EXISTS (SELECT 1 FROM order_books WHERE {_WHERE})")
_AT_SQL = text(
    f"SELECT {_COLUMNS} FROM order_books WHERE symbol = :symbol AND received_at <= :at"
    " ORDER BY received_at DESC, last_update_id DESC LIMIT 1"
)
_LATEST_SQL = text(
    f"SELECT {_COLUMNS} FROM order_books WHERE symbol = :symbol ORDER BY received_at DESC, last_update_id DESC LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class Book:
    """One stored order book: levels in the order sent, prices and quantities as the exact stored decimal text."""

    symbol: str
    received_at: datetime  # UTC, microseconds (PostgreSQL's timestamptz)
    last_update_id: int
    bids: list[tuple[str, str]]  # (price, quantity), best first
    asks: list[tuple[str, str]]

    @property
    def key(self) -> BookKey:
        return (self.received_at, self.last_update_id)


def _book(symbol: str, row: ColdRow) -> Book:
    t, uid, bp, bq, ap, aq = row
    return Book(
        symbol=symbol,
        received_at=t.astimezone(UTC),
        last_update_id=int(uid),
        bids=list(zip(bp, bq, strict=True)),
        asks=list(zip(ap, aq, strict=True)),
    )


def _hot(
    engine: Engine, symbol: str, start: datetime, end: datetime, after: BookKey | None
) -> Generator[Book, None, None]:
    params: dict[str, object] = {"symbol": symbol, "start": start, "end": end}
    sql = _HOT_SQL
    if after is not None:
        sql, params["after_t"], params["after_id"] = _HOT_AFTER_SQL, after[0], after[1]
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_FETCH_ROWS).execute(sql, params)
        for row in result:
            yield _book(symbol, (row[0], row[1], row[2], row[3], row[4], row[5]))


def _cold(
    reader: ArchiveReader, symbol: str, day: date, start: datetime, end: datetime, after: BookKey | None
) -> Generator[Book, None, None]:
    for row in reader.iter_rows(day, symbol):
        if row[0] < start or row[0] >= end or (after is not None and (row[0], row[1]) <= after):
            continue
        yield _book(symbol, row)


def _plan(
    engine: Engine, reader: ArchiveReader | None, symbol: str, start: datetime, end: datetime
) -> list[tuple[date | None, datetime, datetime]]:
    """Consecutive segments of [start, end): (None, a, b) read from PostgreSQL, (day, a, b) from the archive. A day
    is cold when the archive verified it and PostgreSQL holds none of the symbol's books that day (retention dropped
    it); a verified day still in PostgreSQL is read there (rows that arrived late are not lost)."""
    if reader is None:
        return [(None, start, end)]
    cold: set[date] = set()
    first, last = start.astimezone(UTC).date(), (end - timedelta(microseconds=1)).astimezone(UTC).date()
    for day in reader.verified_days(first, last):
        lo, hi = day_bounds(day)
        with engine.connect() as conn:
            present = conn.execute(_HAS_DAY_SQL, {"symbol": symbol, "start": lo, "end": hi}).scalar_one()
        if not present:
            cold.add(day)
    segments: list[tuple[date | None, datetime, datetime]] = []
    day = first
    while day <= last:
        lo, hi = day_bounds(day)
        lo, hi = max(lo, start), min(hi, end)
        kind = day if day in cold else None
        if kind is None and segments and segments[-1][0] is None:
            segments[-1] = (None, segments[-1][1], hi)  # merge consecutive hot days into one query
        else:
            segments.append((kind, lo, hi))
        day += timedelta(days=1)
    return segments


def iter_books(
    engine: Engine,
    *,
    symbol: str,
    start: datetime,
    end: datetime,
    after: BookKey | None = None,
    limit: int | None = None,
    archive_url: str | None = None,
) -> Iterator[Book]:
    """The books of `symbol` received in [start, end) (aware datetimes), ordered by (received_at, last_update_id),
    only those after the key `after` when given (keyset pagination: pass the last key of the previous page), at most
    `limit`. With `archive_url` (BOOKFEED_ARCHIVE_URL), days retention dropped from PostgreSQL are read from the
    verified Parquet archive instead, transparently. Memory stays constant whatever the range: rows are fetched
    `_FETCH_ROWS` at a time through a server-side cursor, archive files a row batch at a time.
    Raises ValueError for naive datetimes; models.coldstore.ArchiveError when the archive cannot be read."""
    if start.tzinfo is None or end.tzinfo is None or (after is not None and after[0].tzinfo is None):
        raise ValueError("start, end and after need a time zone (UTC)")
    if (limit is not None and limit <= 0) or end <= start:
        return
    lo = max(start, after[0]) if after is not None else start
    if lo >= end:
        return
    reader = ArchiveReader(archive_url) if archive_url else None
    sent = 0
    for day, seg_lo, seg_hi in _plan(engine, reader, symbol, lo, end):
        if day is None:
            books = _hot(engine, symbol, seg_lo, seg_hi, after)
        else:
            assert reader is not None
            books = _cold(reader, symbol, day, seg_lo, seg_hi, after)
        try:
            for book in books:
                yield book
                sent += 1
                if limit is not None and sent >= limit:
                    return
        finally:
            books.close()


def _hot_at(engine: Engine, symbol: str, at: datetime | None) -> Book | None:
    with engine.connect() as conn:
        if at is None:
            row = conn.execute(_LATEST_SQL, {"symbol": symbol}).first()
        else:
            row = conn.execute(_AT_SQL, {"symbol": symbol, "at": at}).first()
    return None if row is None else _book(symbol, (row[0], row[1], row[2], row[3], row[4], row[5]))


def book_at(engine: Engine, *, symbol: str, at: datetime | None, archive_url: str | None = None) -> Book | None:
    """The book of `symbol` in force at `at` (aware): the last one received at or before it, by (received_at,
    last_update_id); with `at` None, the newest. PostgreSQL first; with `archive_url`, a newer book on a day the
    archive verified and PostgreSQL no longer holds (the same rule as iter_books) wins, so a day retention dropped
    still answers. None when neither has one. Raises ValueError for a naive `at`; ArchiveError (models.coldstore)
    when the archive cannot be read."""
    if at is not None and at.tzinfo is None:
        raise ValueError("at needs a time zone (UTC)")
    hot = _hot_at(engine, symbol, at)
    if not archive_url:
        return hot
    reader = ArchiveReader(archive_url)
    after = hot.received_at.date() if hot is not None else None  # days up to the hot book's are PostgreSQL's
    last = at.astimezone(UTC).date() if at is not None else None
    days = [
        d for d, m in reader.verified_days(after, last).items() if symbol in m.rows and (after is None or d > after)
    ]
    for day in sorted(days, reverse=True):
        lo, hi = day_bounds(day)
        if last is not None and day == last:
            # Days between the hot book's and `at`'s hold none of the symbol's books in PostgreSQL (or the hot book
            # would be newer); `at`'s own day may hold later ones, and is then read in PostgreSQL alone.
            with engine.connect() as conn:
                if conn.execute(_HAS_DAY_SQL, {"symbol": symbol, "start": lo, "end": hi}).scalar_one():
                    continue
        row = reader.last_at_or_before(day, symbol, at if at is not None else hi)
        if row is not None:
            return _book(symbol, row)
    return hot
