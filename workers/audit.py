"""Read-only audit of what PostgreSQL holds: against the feed's ledger of forwarded frames
(BOOKFEED_LEDGER_PATH), for duplicates, and for average windows that differ from a recomputation.
Used by `make chaos` and the end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from models.errors import MalformedPayloadError
from models.vocabulary import WINDOWS_S, parse_stream_name

__all__ = ["LedgerEntry", "LedgerReport", "averages_mismatches", "check_ledger", "duplicated_books", "read_ledger"]

LedgerEntry = tuple[int, str, int | None]  # (received_ns, stream, lastUpdateId)


@dataclass(frozen=True, slots=True)
class LedgerReport:
    received: int
    stored: int
    rejected: int
    missing: list[LedgerEntry] = field(default_factory=list)  # neither a stored book nor a rejected frame


def read_ledger(path: Path) -> list[LedgerEntry]:
    """The lines the feed wrote: received_ns, stream, lastUpdateId (empty when the frame had none)."""
    out: list[LedgerEntry] = []
    for line in path.read_text().splitlines():
        ns, stream, luid = line.split("\t")
        out.append((int(ns), stream, int(luid) if luid else None))
    return out


def check_ledger(engine: Engine, entries: list[LedgerEntry]) -> LedgerReport:
    """Match each forwarded frame with its stored book (symbol, depth, lastUpdateId, received_at) or its rejected
    record (received_at, to the microsecond)."""
    with engine.connect() as conn:
        books = {
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT symbol, depth, last_update_id, (extract(epoch FROM received_at) * 1000000)::bigint "
                    "FROM book_snapshots"
                )
            )
        }
        rejected = {
            us
            for (us,) in conn.execute(
                text("SELECT (extract(epoch FROM received_at) * 1000000)::bigint FROM rejected_frames")
            )
        }
    stored = n_rejected = 0
    missing: list[LedgerEntry] = []
    for ns, stream, luid in entries:
        us = ns // 1000
        if stream and luid is not None and _book_key(stream, luid, us) in books:
            stored += 1
        elif us in rejected:
            n_rejected += 1
        else:
            missing.append((ns, stream, luid))
    return LedgerReport(received=len(entries), stored=stored, rejected=n_rejected, missing=missing)


def _book_key(stream: str, luid: int, us: int) -> tuple[Any, ...] | None:
    try:
        name = parse_stream_name(stream)
    except MalformedPayloadError:
        return None
    return (name.symbol, name.depth, luid, us)


def duplicated_books(engine: Engine) -> int:
    """Books stored more than once (same exchange, symbol, depth and lastUpdateId)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) - count(DISTINCT (exchange, symbol, depth, last_update_id)) FROM book_snapshots")
            ).scalar_one()
        )


def averages_mismatches(engine: Engine, *, closed_before_s: float) -> list[tuple[Any, ...]]:
    """30 s and 60 s windows ending by `closed_before_s` whose row in the price_averages view is missing, extra or
    differs from a recomputation over the book_snapshots table (books with a price, not crossed; samples exactly,
    avg_price to 1e-9 relative)."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    """
            WITH expected AS (
              SELECT exchange, symbol, w AS window_seconds,
                     date_bin(make_interval(secs => w), received_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS ws,
                     avg(price) AS avg_price, count(*) AS samples
              FROM book_snapshots CROSS JOIN unnest(CAST(:windows AS int[])) v(w)
              WHERE price IS NOT NULL AND NOT crossed
              GROUP BY 1, 2, 3, 4)
            SELECT e.symbol, e.window_seconds, e.ws, e.samples, e.avg_price, a.symbol, a.window_seconds,
                   a.window_start, a.samples, a.avg_price
            FROM (SELECT * FROM expected
                  WHERE ws + make_interval(secs => window_seconds) <= to_timestamp(:t)) e
            FULL JOIN (SELECT * FROM price_averages WHERE window_end <= to_timestamp(:t)) a
              ON (a.exchange, a.symbol, a.window_seconds, a.window_start)
               = (e.exchange, e.symbol, e.window_seconds, e.ws)
            WHERE e.ws IS NULL OR a.window_start IS NULL OR a.samples <> e.samples
               OR abs(a.avg_price - e.avg_price) > 1e-9 * abs(e.avg_price)
            """
                ),
                {"t": closed_before_s, "windows": list(WINDOWS_S)},
            )
        ]
