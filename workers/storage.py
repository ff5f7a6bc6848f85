"""The one home of PostgreSQL writes: partitions, batch claims, COPY of books, rejected frames.

`to_rows` is pure; every other function does I/O on a connection it is given, inside the caller's transaction.
Driver errors are translated here: connection problems become TransientStorageError, the rest StorageError.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date

import psycopg2
import psycopg2.errors
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from models.book import BookSnapshot
from models.errors import StorageError, TransientStorageError
from models.metrics import BookMetrics
from models.tables import book_snapshots

__all__ = [
    "GapRow",
    "Rejected",
    "claim_batch",
    "copy_books",
    "ensure_partitions",
    "insert_books_skipping_duplicates",
    "insert_gaps",
    "insert_rejected",
    "ns_to_timestamp",
    "set_batch_counts",
    "to_rows",
    "translate_errors",
]

_COLUMNS = ", ".join(c.name for c in book_snapshots.columns)
_COPY_SQL = f"COPY {book_snapshots.name} ({_COLUMNS}) FROM STDIN"
_STAGE = "bookfeed_stage"


@dataclass(frozen=True, slots=True)
class GapRow:
    symbol: str
    stream: str
    start_ns: int
    end_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    received_ns: int
    reason: str
    raw: str


def ns_to_timestamp(ns: int) -> str:
    """'YYYY-MM-DD HH:MM:SS.ffffff+00' for ns since the epoch (truncated to the microseconds timestamptz keeps)."""
    secs, rem = divmod(ns, 1_000_000_000)
    return f"{_second(secs)}.{rem // 1000:06d}+00"


_SECOND_CACHE: dict[int, str] = {}


def _second(secs: int) -> str:
    s = _SECOND_CACHE.get(secs)
    if s is None:
        if len(_SECOND_CACHE) > 4096:
            _SECOND_CACHE.clear()
        s = _SECOND_CACHE[secs] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
    return s


def _opt(v: object) -> str:
    return "\\N" if v is None else str(v)


def _dec(v: object) -> str:
    return "\\N" if v is None else format(v, "f")


def to_rows(items: Sequence[tuple[BookSnapshot, BookMetrics]], *, exchange: str) -> str:
    """COPY text-format lines for book_snapshots, in its column order.

    Safe without escaping: symbols are [A-Z0-9] and every number was validated as a plain decimal by the parser.
    """
    out = []
    for b, m in items:
        out.append(
            "\t".join(
                (
                    ns_to_timestamp(b.received_ns),
                    exchange,
                    b.symbol,
                    str(b.depth),
                    str(b.last_update_id),
                    "{" + ",".join(b.bid_prices) + "}",
                    "{" + ",".join(b.bid_quantities) + "}",
                    "{" + ",".join(b.ask_prices) + "}",
                    "{" + ",".join(b.ask_quantities) + "}",
                    b.bid_prices[0] if b.bid_prices else "\\N",
                    b.ask_prices[0] if b.ask_prices else "\\N",
                    _dec(m.spread),
                    _opt(m.bid_vwap),
                    _opt(m.ask_vwap),
                    _opt(m.price),
                    "t" if m.crossed else "f",
                )
            )
        )
    out.append("")
    return "\n".join(out)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into StorageError / TransientStorageError; nothing above this module sees psycopg2."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg2.OperationalError, psycopg2.InterfaceError) as e:
        raise TransientStorageError(_first_line(e)) from e
    except sa_exc.DBAPIError as e:
        if e.connection_invalidated:
            raise TransientStorageError(_first_line(e)) from e
        raise StorageError(_first_line(e)) from e
    except psycopg2.Error as e:
        raise StorageError(_first_line(e)) from e


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]


def ensure_partitions(conn: Connection, days: Iterable[date]) -> None:
    """Create the daily partitions of book_snapshots for `days` if missing (idempotent, race-safe)."""
    for day in sorted(set(days)):
        conn.execute(text("SELECT bookfeed_ensure_partition(:day)"), {"day": day})


def claim_batch(
    conn: Connection, *, batch_id: str, n_books: int, n_rejected: int, min_ns: int | None, max_ns: int | None
) -> bool:
    """Record the batch; False when it was stored before (a redelivery). A concurrent twin blocks here until the
    first transaction ends, so exactly one of them stores the frames."""
    row = conn.execute(
        text(
            "INSERT INTO ingest_batches (batch_id, min_received_at, max_received_at, n_books, n_rejected) "
            "VALUES (:batch_id, CAST(:min_at AS timestamptz), CAST(:max_at AS timestamptz), :n_books, :n_rejected) "
            "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id"
        ),
        {
            "batch_id": batch_id,
            "min_at": None if min_ns is None else ns_to_timestamp(min_ns),
            "max_at": None if max_ns is None else ns_to_timestamp(max_ns),
            "n_books": n_books,
            "n_rejected": n_rejected,
        },
    ).first()
    return row is not None


def set_batch_counts(conn: Connection, *, batch_id: str, n_books: int, n_rejected: int) -> None:
    """Correct a claimed batch's counts once they are known (the frame-by-frame path)."""
    conn.execute(
        text("UPDATE ingest_batches SET n_books = :n_books, n_rejected = :n_rejected WHERE batch_id = :batch_id"),
        {"batch_id": batch_id, "n_books": n_books, "n_rejected": n_rejected},
    )


def copy_books(conn: Connection, rows: str) -> None:
    """COPY rows (from `to_rows`) straight into book_snapshots. Raises psycopg2 UniqueViolation on a stored frame."""
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.copy_expert(_COPY_SQL, io.StringIO(rows))
    finally:
        cur.close()


def insert_books_skipping_duplicates(conn: Connection, rows: str) -> int:
    """COPY into a per-connection staging table, then insert what is not stored yet. Returns rows inserted."""
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        # A TEMP table made once per connection and emptied at commit: no shared staging table to bloat or lock.
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE {book_snapshots.name} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        cur.copy_expert(f"COPY {_STAGE} ({_COLUMNS}) FROM STDIN", io.StringIO(rows))
        cur.execute(
            f"INSERT INTO {book_snapshots.name} ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGE} ON CONFLICT DO NOTHING"
        )
        inserted: int = cur.rowcount
        cur.execute(f"TRUNCATE {_STAGE}")
        return inserted
    finally:
        cur.close()


def insert_rejected(conn: Connection, rejected: Sequence[Rejected], *, exchange: str, batch_id: str) -> None:
    """Store rejected frames with their reason; a frame stored before is skipped."""
    if not rejected:
        return
    conn.execute(
        text(
            "INSERT INTO rejected_frames (received_at, exchange, batch_id, reason, raw) "
            "VALUES (CAST(:received_at AS timestamptz), :exchange, :batch_id, :reason, :raw) "
            "ON CONFLICT DO NOTHING"
        ),
        [
            {
                "received_at": ns_to_timestamp(r.received_ns),
                "exchange": exchange,
                "batch_id": batch_id,
                "reason": r.reason,
                # PostgreSQL text cannot hold NUL; say so rather than lose the frame.
                "raw": r.raw.replace("\x00", "\ufffd"),
            }
            for r in rejected
        ],
    )


def insert_gaps(conn: Connection, gaps: Sequence[GapRow], *, exchange: str, batch_id: str) -> None:
    """Store feed gaps; one stored before is skipped."""
    if not gaps:
        return
    conn.execute(
        text(
            "INSERT INTO feed_gap_intervals (exchange, symbol, stream, start_at, end_at, reason, batch_id) "
            "VALUES (:exchange, :symbol, :stream, CAST(:start_at AS timestamptz), CAST(:end_at AS timestamptz), "
            ":reason, :batch_id) ON CONFLICT DO NOTHING"
        ),
        [
            {
                "exchange": exchange,
                "symbol": g.symbol,
                "stream": g.stream,
                "start_at": ns_to_timestamp(g.start_ns),
                "end_at": ns_to_timestamp(g.end_ns),
                "reason": g.reason,
                "batch_id": batch_id,
            }
            for g in gaps
        ],
    )


def is_unique_violation(e: BaseException) -> bool:
    orig = getattr(e, "orig", e)
    return isinstance(orig, psycopg2.errors.UniqueViolation)
