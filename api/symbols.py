"""The index of stored symbols behind `/v1/symbols` and every endpoint's unknown-symbol check: PostgreSQL's books
(one scan of order_books, per symbol and UTC day) and, with an archive, the days it verified that PostgreSQL no
longer holds (their manifests' counts; first and last times from the files' footers). Read-only."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, text

from api.archive import ArchiveReader
from api.problems import ProblemError
from models.live import rfc3339

__all__ = ["SymbolIndex", "SymbolStats", "read_symbol_stats"]

# Per symbol and UTC day: which days PostgreSQL holds (a verified day it holds is read there, as api.books does).
_DAYS_SQL = text(
    "SELECT symbol, (received_at AT TIME ZONE 'UTC')::date AS day, min(received_at), max(received_at), count(*) "
    "FROM order_books GROUP BY 1, 2"
)

Span = tuple[datetime, datetime]


@dataclass(slots=True)
class SymbolStats:
    """One symbol's books, hot and cold: the first and last received_at and how many there are."""

    symbol: str
    first: datetime
    last: datetime
    books: int
    hot_days: set[date] = field(default_factory=set)

    def add(self, span: Span, books: int) -> None:
        self.first, self.last, self.books = min(self.first, span[0]), max(self.last, span[1]), self.books + books

    def as_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "first": rfc3339(self.first), "last": rfc3339(self.last), "books": self.books}


def read_symbol_stats(
    engine: Engine, reader: ArchiveReader | None, spans: dict[tuple[date, str, int], Span | None] | None = None
) -> list[SymbolStats]:
    """Every symbol with books in PostgreSQL or on a day the archive verified and PostgreSQL does not hold, by
    name. `spans` caches the archive files' first/last times by (day, symbol, rows). ArchiveError (models.coldstore)
    when the archive cannot be read."""
    found: dict[str, SymbolStats] = {}
    with engine.connect() as conn:
        for symbol, day, first, last, count in conn.execute(_DAYS_SQL):
            stats = found.get(symbol)
            if stats is None:
                stats = found[symbol] = SymbolStats(symbol, first, last, 0)
            stats.add((first, last), int(count))
            stats.hot_days.add(day)
    if reader is None:
        return sorted(found.values(), key=lambda s: s.symbol)
    cache = {} if spans is None else spans
    cold: dict[str, list[tuple[date, int]]] = {}
    for day, manifest in reader.verified_days().items():
        for symbol, rows in manifest.rows.items():
            if rows > 0 and (symbol not in found or day not in found[symbol].hot_days):
                cold.setdefault(symbol, []).append((day, rows))
    for symbol, days in cold.items():
        days.sort()
        first, last = (_span(reader, cache, symbol, d, n) for d, n in (days[0], days[-1]))
        if first is None or last is None:
            continue  # a verified day always has its files; a missing one is not a book to list
        span, total = (first[0], last[1]), sum(n for _, n in days)
        if symbol in found:
            found[symbol].add(span, total)
        else:
            found[symbol] = SymbolStats(symbol, span[0], span[1], total)
    return sorted(found.values(), key=lambda s: s.symbol)


def _span(
    reader: ArchiveReader, cache: dict[tuple[date, str, int], Span | None], symbol: str, day: date, rows: int
) -> Span | None:
    key = (day, symbol, rows)  # a day archived again (late books) has other counts: read again
    if key not in cache:
        cache[key] = reader.time_span(day, symbol)
    return cache[key]


class SymbolIndex:
    """`/v1/symbols` and the unknown-symbol check. Counting every book is a scan of order_books (and a read of the
    archive's manifests), so the result is kept `ttl_s` seconds; a symbol not in it triggers a refresh only once the
    kept result is that old."""

    def __init__(self, engine: Engine, *, ttl_s: float, archive_url: str | None = None) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._archive_url = archive_url
        self._lock = threading.Lock()
        self._spans: dict[tuple[date, str, int], Span | None] = {}
        self._stats: list[dict[str, Any]] = []
        self._names: frozenset[str] = frozenset()
        self._read_at = -float("inf")

    def _refresh(self) -> None:
        reader = ArchiveReader(self._archive_url) if self._archive_url else None
        stats = [s.as_json() for s in read_symbol_stats(self._engine, reader, self._spans)]
        self._stats, self._names, self._read_at = stats, frozenset(s["symbol"] for s in stats), time.monotonic()

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._ttl_s:
                self._refresh()
            return self._stats

    def require(self, symbol: str) -> str:
        """`symbol` if books of it are stored (or archived); else ProblemError 404."""
        with self._lock:
            if symbol not in self._names and time.monotonic() - self._read_at >= self._ttl_s:
                self._refresh()
            if symbol not in self._names:
                raise ProblemError(404, "Unknown symbol", f"no books of {symbol} are stored (see /v1/symbols)")
        return symbol
