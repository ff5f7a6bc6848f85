"""Store one batch of frames: parse (workers.envelope), compute metrics, write books and rejected frames in one
transaction; or record a batch that will not be stored as rejected. Plain functions with the engine passed in: the
delivery policy (workers.deliveries) chooses which, workers/tasks.py wraps it for Celery.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from models.errors import (
    DuplicateRowError,
    MissingPartitionError,
    PartitionRefusedError,
    StorageError,
    TransientStorageError,
)
from workers import live, storage
from workers.envelope import ParsedBatch, excerpt, parse_batch, refused_rows
from workers.storage import Rejected

__all__ = ["IngestResult", "ingest_batch", "reject_batch"]

logger = logging.getLogger(__name__)

# Partitions known to exist, per database this process writes to; a new UTC day costs one extra statement per
# process. Only today's and yesterday's are trusted: retention (BOOKFEED_RETENTION_DAYS >= 1) keeps at least those,
# and any older day it may have dropped since, so a late book of such a day asks for its partition again (one
# statement per batch).
_known_days: dict[str, set[date]] = {}


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


def ingest_batch(engine: Engine, payload: Any, *, frame_by_frame: bool = False) -> IngestResult:
    """Store a batch exactly once. Raises TransientStorageError when PostgreSQL is unreachable (retry later);
    a batch whose books cannot be written together is stored frame by frame, failures going to rejected.
    `frame_by_frame` goes to that path at once (a batch that failed or killed its worker before)."""
    t0 = time.perf_counter()
    batch = _with_partitions(engine, parse_batch(payload, fast=not frame_by_frame), payload)
    store = _store_one_by_one if frame_by_frame else _store
    try:
        try:
            counts = store(engine, batch)
        except MissingPartitionError as exc:
            # A partition this process knew was dropped since (by hand, or the database re-created under running
            # workers): forget the partitions it knew, make the batch's again, and write it once more.
            logger.warning("batch %s: %s; making its partitions again", batch.batch_id, exc)
            _known_days.pop(str(engine.url), None)
            batch = _with_partitions(engine, batch, payload)
            counts = store(engine, batch)
    except TransientStorageError:
        raise
    except StorageError as exc:
        logger.warning("batch %s failed as a whole (%s); storing frame by frame", batch.batch_id, exc)
        counts = _store_one_by_one(engine, _one_by_one(batch, payload))
    n_books, n_rejected = counts or (0, 0)
    if batch.rejected and counts:
        logger.warning(
            "batch %s: %d frame(s) rejected, first reason: %s", batch.batch_id, n_rejected, batch.rejected[0].reason
        )
    return IngestResult(batch.batch_id, n_books, n_rejected, counts is None, (time.perf_counter() - t0) * 1000)


def _day(ns: int) -> date:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).date()


def _days(batch: ParsedBatch) -> set[date]:
    """The UTC days of the batch's books; a batch within one day (nearly all) costs two date conversions."""
    lo, hi = _bounds(batch)
    if lo is None or hi is None:
        return set()
    first = _day(lo)
    return {first} if first == _day(hi) else {_day(ns) for ns in batch.received_ns()}


def _one_by_one(batch: ParsedBatch, payload: Any) -> ParsedBatch:
    """`batch` with every book parsed by the per-frame path (for the paths that handle books one by one)."""
    return batch if batch.columns is None else parse_batch(payload, fast=False)


def _with_partitions(engine: Engine, batch: ParsedBatch, payload: Any) -> ParsedBatch:
    """Create the missing daily partitions, one transaction each. The books of a day the partition function refuses
    (too far from now) are rejected with its reason; the rest of the batch is stored. Any other error (a revoked
    grant, a missing function, an outage) propagates, so the batch is retried rather than its books rejected."""
    refused: dict[date, str] = {}
    trusted = datetime.now(UTC).date() - timedelta(days=1)
    known = _known_days.setdefault(str(engine.url), set())
    known.difference_update([d for d in known if d < trusted])
    for day in sorted(d for d in _days(batch) if d not in known):
        try:
            with storage.translate_errors(), engine.begin() as conn:
                storage.ensure_partitions(conn, [day])
        except PartitionRefusedError as exc:  # only the function's own refusal; other errors are retried
            refused[day] = f"no partition for {day}: {exc}"
            continue
        known.add(day)
    if not refused:
        return batch
    batch = _one_by_one(batch, payload)
    kept = [
        (item, raw)
        for item, raw in zip(batch.books, batch.raws, strict=True)
        if _day(item[0].received_ns) not in refused
    ]
    lost = [
        Rejected(b.received_ns, refused[_day(b.received_ns)], raw)
        for (b, _), raw in zip(batch.books, batch.raws, strict=True)
        if _day(b.received_ns) in refused
    ]
    return replace(batch, books=[i for i, _ in kept], raws=[r for _, r in kept], rejected=[*batch.rejected, *lost])


def _bounds(batch: ParsedBatch) -> tuple[int | None, int | None]:
    ns = [b.received_ns for b, _ in batch.books]
    if batch.columns is not None:
        ns.extend((int(batch.columns.received_ns.min()), int(batch.columns.received_ns.max())))
    return (min(ns), max(ns)) if ns else (None, None)


def _store(engine: Engine, batch: ParsedBatch) -> tuple[int, int] | None:
    """(books, rejected) stored, or None when the batch was stored before."""
    rows: list[str | bytes] = [storage.to_rows(batch.books, exchange=batch.exchange)] if batch.books else []
    if batch.columns is not None:
        rows.append(storage.columns_to_rows(batch.columns, exchange=batch.exchange))
    lo, hi = _bounds(batch)
    with storage.translate_errors(), engine.begin() as conn:
        if not storage.claim_batch(
            conn,
            batch_id=batch.batch_id,
            n_books=batch.n_books,
            n_rejected=len(batch.rejected),
            min_ns=lo,
            max_ns=hi,
        ):
            return None
        if batch.n_books:
            try:
                with conn.begin_nested():
                    storage.copy_books(conn, *rows)
            except DuplicateRowError:
                # Some frame is stored already (re-published under another batch id): keep the rest.
                storage.insert_books_skipping_duplicates(conn, *rows)
        storage.insert_rejected(conn, batch.rejected, exchange=batch.exchange, batch_id=batch.batch_id)
        storage.insert_gaps(conn, batch.gaps, exchange=batch.exchange, batch_id=batch.batch_id)
    live.publish_stored(batch.exchange, batch.books, batch.columns)  # committed: WS /v1/live pushes stored books
    return batch.n_books, len(batch.rejected)


def _store_one_by_one(engine: Engine, batch: ParsedBatch) -> tuple[int, int] | None:
    """The poison-batch path: each book in its own savepoint; a book PostgreSQL refuses is rejected with the
    database's reason. Only connection errors escape (as TransientStorageError)."""
    kept = 0
    stored = []
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
                stored.append(item)
            except (TransientStorageError, MissingPartitionError):
                raise  # not the book's fault: the batch is retried (ingest_batch makes the partition again)
            except StorageError as exc:
                rejected.append(Rejected(item[0].received_ns, f"database refused the book: {exc}", raw))
        storage.insert_rejected(conn, rejected, exchange=batch.exchange, batch_id=batch.batch_id)
        storage.insert_gaps(conn, batch.gaps, exchange=batch.exchange, batch_id=batch.batch_id)
        storage.set_batch_counts(conn, batch_id=batch.batch_id, n_books=kept, n_rejected=len(rejected))
    live.publish_stored(batch.exchange, stored)
    return kept, len(rejected)


def reject_batch(engine: Engine, payload: Any, *, reason: str) -> int:
    """Record every frame of a batch that will not be stored (refused whole, or failed after all retries) in
    rejected_frames with `reason`, and claim its batch id in the same transaction: a batch already claimed (stored,
    by a delivery whose worker died before acknowledging it, or rejected before) is left as it is and 0 returned,
    so no batch ends both stored and rejected. The last resort: no payload makes it fail (workers.envelope.
    refused_rows). Returns the rows offered. Raises only TransientStorageError (PostgreSQL unreachable)."""
    refused = refused_rows(payload, reason=reason)
    try:
        return _record_refused(engine, refused.batch_id, refused.exchange, refused.rows)
    except TransientStorageError:
        raise
    except StorageError as exc:
        # Nothing known refuses these rows; should something, the payload is still kept, as one row.
        logger.error(
            "batch %s: rejected frames not insertable (%s); recording the payload whole", refused.batch_id, exc
        )
        whole = [Rejected(time.time_ns(), f"{refused.reason} (frames not insertable: {exc})", excerpt(payload, None))]
        return _record_refused(engine, refused.batch_id, refused.exchange, whole)


def _record_refused(engine: Engine, batch_id: str, exchange: str, rows: list[Rejected]) -> int:
    with storage.translate_errors(), engine.begin() as conn:
        if not storage.claim_batch(conn, batch_id=batch_id, n_books=0, n_rejected=len(rows), min_ns=None, max_ns=None):
            logger.warning("batch %s is stored already; not recording it as rejected", batch_id)
            return 0
        storage.insert_rejected(conn, rows, exchange=exchange, batch_id=batch_id)
    return len(rows)
