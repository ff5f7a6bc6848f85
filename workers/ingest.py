"""Store one batch of frames: parse, compute metrics, write books and rejected frames in one transaction.

Plain functions with the engine passed in; workers/tasks.py wraps them for Celery.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine

from models.book import BookSnapshot, parse_frame, parse_stream_name
from models.errors import InvalidBookError, StorageError, TransientStorageError
from models.messages import PAYLOAD_VERSION
from models.metrics import BookMetrics, book_metrics
from workers import storage
from workers.storage import GapRow, Rejected

__all__ = ["IngestResult", "ParsedBatch", "ingest_batch", "parse_batch", "reject_batch"]

logger = logging.getLogger(__name__)

# Partitions known to exist in this process; a new UTC day costs one extra statement per process.
_known_days: set[date] = set()


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    batch_id: str
    exchange: str
    books: list[tuple[BookSnapshot, BookMetrics]]
    raws: list[str]  # the frame text of each book, for the rare book PostgreSQL refuses
    rejected: list[Rejected]
    gaps: list[GapRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class IngestResult:
    batch_id: str
    n_books: int
    n_rejected: int
    duplicate: bool
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "n_books": self.n_books,
            "n_rejected": self.n_rejected,
            "duplicate": self.duplicate,
            "duration_ms": round(self.duration_ms, 2),
        }


def parse_batch(payload: Any) -> ParsedBatch:
    """Validate the batch envelope and each frame. Frames that fail become Rejected with their reason; a broken
    envelope raises InvalidBookError (the feed never sends one, so it is a bug or a foreign producer)."""
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        raise InvalidBookError(f"batch payload is not version {PAYLOAD_VERSION} of models.messages.Batch")
    batch_id, exchange, frames = payload.get("batch_id"), payload.get("exchange"), payload.get("frames")
    if not isinstance(batch_id, str) or not isinstance(exchange, str) or not isinstance(frames, list):
        raise InvalidBookError("batch payload lacks batch_id, exchange or frames")
    books: list[tuple[BookSnapshot, BookMetrics]] = []
    raws: list[str] = []
    rejected: list[Rejected] = []
    for item in frames:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], str)):
            rejected.append(Rejected(_now_ns(), "batch item is not [received_ns, raw text]", repr(item)[:65536]))
            continue
        received_ns, raw = item
        try:
            book = parse_frame(raw, received_ns=received_ns)
        except InvalidBookError as exc:
            rejected.append(Rejected(received_ns, exc.reason, raw))
            continue
        books.append((book, book_metrics(book)))
        raws.append(raw)
    gaps = _parse_gaps(payload.get("gaps", []), batch_id)
    return ParsedBatch(batch_id=batch_id, exchange=exchange, books=books, raws=raws, rejected=rejected, gaps=gaps)


def _parse_gaps(items: Any, batch_id: str) -> list[GapRow]:
    """Feed gaps of the batch; a malformed one (a foreign producer) is logged and skipped, never fatal."""
    gaps: list[GapRow] = []
    for item in items if isinstance(items, list) else [items]:
        try:
            stream, start_ns, end_ns, reason = item
            if not (type(start_ns) is int and type(end_ns) is int and start_ns <= end_ns):
                raise ValueError("bad interval")
            gaps.append(GapRow(parse_stream_name(stream).symbol, str(stream), start_ns, end_ns, str(reason)[:500]))
        except (TypeError, ValueError, InvalidBookError) as exc:
            logger.warning("batch %s: ignoring malformed gap %r (%s)", batch_id, item, exc)
    return gaps


def ingest_batch(engine: Engine, payload: Any, *, frame_by_frame: bool = False) -> IngestResult:
    """Store a batch exactly once. Raises TransientStorageError when PostgreSQL is unreachable (retry later);
    a batch whose books cannot be written together is stored frame by frame, failures going to rejected.
    `frame_by_frame` goes to that path at once (a batch that failed or killed its worker before)."""
    t0 = time.perf_counter()
    batch = parse_batch(payload)
    days = {datetime.fromtimestamp(b.received_ns // 1_000_000_000, UTC).date() for b, _ in batch.books}
    with storage.translate_errors():
        if days - _known_days:
            with engine.begin() as conn:
                storage.ensure_partitions(conn, days - _known_days)
            _known_days.update(days)
    try:
        counts = _store_one_by_one(engine, batch) if frame_by_frame else _store(engine, batch)
    except TransientStorageError:
        raise
    except StorageError as exc:
        logger.warning("batch %s failed as a whole (%s); storing frame by frame", batch.batch_id, exc)
        counts = _store_one_by_one(engine, batch)
    n_books, n_rejected = counts or (0, 0)
    if batch.rejected and counts:
        logger.warning(
            "batch %s: %d frame(s) rejected, first reason: %s", batch.batch_id, n_rejected, batch.rejected[0].reason
        )
    return IngestResult(batch.batch_id, n_books, n_rejected, counts is None, (time.perf_counter() - t0) * 1000)


def _bounds(batch: ParsedBatch) -> tuple[int | None, int | None]:
    ns = [b.received_ns for b, _ in batch.books]
    return (min(ns), max(ns)) if ns else (None, None)


def _store(engine: Engine, batch: ParsedBatch) -> tuple[int, int] | None:
    """(books, rejected) stored, or None when the batch was stored before."""
    rows = storage.to_rows(batch.books, exchange=batch.exchange)
    lo, hi = _bounds(batch)
    with storage.translate_errors(), engine.begin() as conn:
        if not storage.claim_batch(
            conn,
            batch_id=batch.batch_id,
            n_books=len(batch.books),
            n_rejected=len(batch.rejected),
            min_ns=lo,
            max_ns=hi,
        ):
            return None
        if batch.books:
            try:
                with conn.begin_nested():
                    storage.copy_books(conn, rows)
            except Exception as exc:
                if not storage.is_unique_violation(exc):
                    raise
                # Some frame is stored already (re-published under another batch id): keep the rest.
                storage.insert_books_skipping_duplicates(conn, rows)
        storage.insert_rejected(conn, batch.rejected, exchange=batch.exchange, batch_id=batch.batch_id)
        storage.insert_gaps(conn, batch.gaps, exchange=batch.exchange, batch_id=batch.batch_id)
    return len(batch.books), len(batch.rejected)


def _store_one_by_one(engine: Engine, batch: ParsedBatch) -> tuple[int, int] | None:
    """The poison-batch path: each book in its own savepoint; a book PostgreSQL refuses is rejected with the
    database's reason. Only connection errors escape (as TransientStorageError)."""
    kept = 0
    rejected = list(batch.rejected)
    lo, hi = _bounds(batch)
    with storage.translate_errors(), engine.begin() as conn:
        if not storage.claim_batch(conn, batch_id=batch.batch_id, n_books=0, n_rejected=0, min_ns=lo, max_ns=hi):
            return None
        for item, raw in zip(batch.books, batch.raws, strict=True):
            try:
                with storage.translate_errors(), conn.begin_nested():
                    storage.insert_books_skipping_duplicates(conn, storage.to_rows([item], exchange=batch.exchange))
                kept += 1
            except TransientStorageError:
                raise
            except StorageError as exc:
                rejected.append(Rejected(item[0].received_ns, f"database refused the book: {exc}", raw))
        storage.insert_rejected(conn, rejected, exchange=batch.exchange, batch_id=batch.batch_id)
        storage.insert_gaps(conn, batch.gaps, exchange=batch.exchange, batch_id=batch.batch_id)
        storage.set_batch_counts(conn, batch_id=batch.batch_id, n_books=kept, n_rejected=len(rejected))
    return kept, len(rejected)


def reject_batch(engine: Engine, payload: Any, *, reason: str) -> int:
    """Record every frame of a batch that could not be stored after all retries. Returns the frames recorded."""
    frames = payload.get("frames", []) if isinstance(payload, dict) else []
    batch_id = str(payload.get("batch_id", "unknown")) if isinstance(payload, dict) else "unknown"
    exchange = str(payload.get("exchange", "binance")) if isinstance(payload, dict) else "binance"
    rejected = [
        Rejected(f[0], reason, f[1])
        if isinstance(f, list) and len(f) == 2 and type(f[0]) is int
        else Rejected(_now_ns(), reason, repr(f)[:65536])
        for f in frames
    ]
    with storage.translate_errors(), engine.begin() as conn:
        storage.insert_rejected(conn, rejected, exchange=exchange, batch_id=batch_id)
    return len(rejected)


def _now_ns() -> int:
    return time.time_ns()
