"""Store one batch of frames: parse, compute metrics, write books and rejected frames in one transaction.

Plain functions with the engine passed in; workers/tasks.py wraps them for Celery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine

from models.book import BookSnapshot, parse_frame, parse_stream_name
from models.errors import InvalidBookError, StorageError, TransientStorageError
from models.messages import EXCHANGES, PAYLOAD_VERSION
from models.metrics import BookMetrics, book_metrics
from workers import storage
from workers.storage import GapRow, Rejected

__all__ = [
    "UNKNOWN_EXCHANGE",
    "IngestResult",
    "ParsedBatch",
    "batch_key",
    "ingest_batch",
    "parse_batch",
    "reject_batch",
]

logger = logging.getLogger(__name__)

# Partitions known to exist in this process; a new UTC day costs one extra statement per process.
_known_days: set[date] = set()
# Receive times are written with four-digit years (workers.storage.ns_to_timestamp): [1970-01-01, 10000-01-01).
_MAX_NS = 253_402_300_800 * 1_000_000_000
_NS_RANGE = "an integer of ns in [1970, 10000)"
_MAX_BATCH_ID = 128
_REASON_CHARS = 500
_EXCERPT_CHARS = 65536
# The exchange recorded for the frames of a batch that names no known exchange: no venue's name is forged.
UNKNOWN_EXCHANGE = "unknown"


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
    """Validate the batch envelope field by field, then each frame.

    A frame item that is not ``[received_ns, raw text]`` with ``received_ns`` an int in [1970, 10000), or whose text
    fails `parse_frame`, becomes a Rejected row with its reason; so does each entry of the feed's ``rejected`` list.
    A missing or unusable ``batch_id`` (not a string, empty, over 128 characters, not printable) is replaced by one
    derived from the payload, so a redelivery is still recognised. Raises InvalidBookError only when the payload is
    not a version-1 batch object or names an exchange outside models.messages.EXCHANGES: that batch is refused whole
    (the caller records its frames with `reject_batch`), since storing its books would forge another venue's data.
    """
    if not isinstance(payload, dict) or type(payload.get("v")) is not int or payload["v"] != PAYLOAD_VERSION:
        raise InvalidBookError(f"batch payload is not version {PAYLOAD_VERSION} of models.messages.Batch")
    exchange = payload.get("exchange")
    if not isinstance(exchange, str) or exchange not in EXCHANGES:
        raise InvalidBookError(f"unknown exchange {_shown(exchange, 40)}")
    batch_id, now = _batch_id(payload), _now_ns()
    books: list[tuple[BookSnapshot, BookMetrics]] = []
    raws: list[str] = []
    rejected: list[Rejected] = []
    for item in _items(payload, "frames", rejected, now):
        if not (type(item) is list and len(item) == 2):
            rejected.append(Rejected(now, "batch item is not [received_ns, raw text]", _excerpt(item)))
            continue
        received_ns, raw = item
        if not isinstance(raw, str):
            reason = f"raw frame is {type(raw).__name__}, not text"
            rejected.append(Rejected(received_ns if _valid_ns(received_ns) else now, reason, _excerpt(raw)))
        elif not _valid_ns(received_ns):
            rejected.append(Rejected(now, f"received_ns {_shown(received_ns, 40)} is not {_NS_RANGE}", raw))
        else:
            try:
                book = parse_frame(raw, received_ns=received_ns)
            except InvalidBookError as exc:
                rejected.append(Rejected(received_ns, exc.reason, raw))
                continue
            books.append((book, book_metrics(book)))
            raws.append(raw)
    rejected.extend(_feed_rejected(_items(payload, "rejected", rejected, now), now))
    gaps = _parse_gaps(payload.get("gaps", []), batch_id)
    return ParsedBatch(batch_id=batch_id, exchange=exchange, books=books, raws=raws, rejected=rejected, gaps=gaps)


def _items(payload: dict[Any, Any], key: str, rejected: list[Rejected], now: int) -> list[Any]:
    """payload[key] when it is a list; anything else present is recorded as one rejected item."""
    value = payload.get(key)
    if value is None or isinstance(value, list):
        return value or []
    rejected.append(Rejected(now, f"batch {key!r} is not a list", _excerpt(value)))
    return []


def _feed_rejected(items: list[Any], now: int) -> list[Rejected]:
    """The feed's own refusals, [received_ns, reason, excerpt] each, as Rejected rows."""
    out: list[Rejected] = []
    for item in items:
        if type(item) is list and len(item) == 3 and _valid_ns(item[0]) and isinstance(item[1], str):
            excerpt = item[2] if isinstance(item[2], str) else _excerpt(item[2])
            out.append(Rejected(item[0], item[1][:_REASON_CHARS] or "refused by the feed", excerpt))
        else:
            out.append(Rejected(now, "feed rejection is not [received_ns, reason, excerpt]", _excerpt(item)))
    return out


def _parse_gaps(items: Any, batch_id: str) -> list[GapRow]:
    """Feed gaps of the batch; a malformed one (a foreign producer) is logged and skipped, never fatal."""
    gaps: list[GapRow] = []
    for item in items if isinstance(items, list) else [items]:
        try:
            stream, start_ns, end_ns, reason = item
            if not (_valid_ns(start_ns) and _valid_ns(end_ns) and start_ns <= end_ns):
                raise ValueError(f"interval is not two times {_NS_RANGE} in order")
            if not isinstance(reason, str):
                raise TypeError("reason is not text")
            gaps.append(GapRow(parse_stream_name(stream).symbol, stream, start_ns, end_ns, reason[:_REASON_CHARS]))
        except (TypeError, ValueError, InvalidBookError) as exc:
            logger.warning("batch %s: ignoring malformed gap %s (%s)", batch_id, _shown(item, 200), exc)
    return gaps


def _valid_ns(ns: Any) -> bool:
    return type(ns) is int and 0 <= ns < _MAX_NS


def _known_exchange(exchange: Any) -> bool:
    return isinstance(exchange, str) and exchange in EXCHANGES


def batch_key(payload: Any) -> str:
    """The id a batch is stored under: its ``batch_id`` when that is printable text of 1 to 128 characters, else
    "derived-<sha256 of the payload>" (stable across redeliveries). Safe as a database value or Redis key."""
    given = payload.get("batch_id") if isinstance(payload, dict) else None
    if isinstance(given, str) and 0 < len(given) <= _MAX_BATCH_ID and given.isprintable():
        return given
    return "derived-" + hashlib.sha256(_canonical(payload)).hexdigest()


def _batch_id(payload: dict[Any, Any]) -> str:
    key = batch_key(payload)
    if key is not payload.get("batch_id"):
        logger.warning("batch id %s is unusable; the batch is stored as %s", _shown(payload.get("batch_id"), 80), key)
    return key


def _canonical(payload: Any) -> bytes:
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    except Exception:  # not JSON at all (see _excerpt): its repr, or its type, still names it
        text = _excerpt(payload, None)
    return text.encode("utf-8", "backslashreplace")


def _excerpt(value: Any, limit: int | None = _EXCERPT_CHARS) -> str:
    """`value` as text for a rejected row: a string as is, anything else as JSON (repr where JSON fails), cut at
    `limit` characters. Never raises: it serves the last resort, `reject_batch`."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except Exception:  # any object at all may reach the last resort; its text is all that is wanted
            try:
                text = repr(value)
            except Exception:
                text = f"<unprintable {type(value).__name__}>"
    return text if limit is None else text[:limit]


def _shown(value: Any, limit: int) -> str:
    """`value` quoted for a reason: repr of a string, JSON of anything else, at most about `limit` characters."""
    return repr(value[:limit]) if isinstance(value, str) else _excerpt(value, limit)


def ingest_batch(engine: Engine, payload: Any, *, frame_by_frame: bool = False) -> IngestResult:
    """Store a batch exactly once. Raises TransientStorageError when PostgreSQL is unreachable (retry later);
    a batch whose books cannot be written together is stored frame by frame, failures going to rejected.
    `frame_by_frame` goes to that path at once (a batch that failed or killed its worker before)."""
    t0 = time.perf_counter()
    batch = _with_partitions(engine, parse_batch(payload))
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


def _day(ns: int) -> date:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).date()


def _with_partitions(engine: Engine, batch: ParsedBatch) -> ParsedBatch:
    """Create the missing daily partitions, one transaction each. The books of a day PostgreSQL refuses a partition
    for (a date it will not create) are rejected with its reason; the rest of the batch is stored."""
    refused: dict[date, str] = {}
    for day in sorted({_day(b.received_ns) for b, _ in batch.books} - _known_days):
        try:
            with storage.translate_errors(), engine.begin() as conn:
                storage.ensure_partitions(conn, [day])
        except TransientStorageError:
            raise
        except StorageError as exc:
            refused[day] = f"no partition for {day}: {exc}"
            continue
        _known_days.add(day)
    if not refused:
        return batch
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
    """Record every frame of a batch that will not be stored (refused whole, or failed after all retries) in
    rejected_frames with `reason`; the feed's own refusals keep theirs. The last resort: no payload makes it fail.
    A frame item that is not ``[received_ns, text]`` is recorded as its JSON text; a payload that is not a batch
    object, or holds nothing to record, as one row of its JSON text; NUL and lone surrogates are made storable by
    workers.storage. Returns the rows offered. Raises only TransientStorageError (PostgreSQL unreachable)."""
    now, reason = _now_ns(), _excerpt(reason, _REASON_CHARS)
    if isinstance(payload, dict):
        batch_id = _batch_id(payload)
        exchange = payload["exchange"] if _known_exchange(payload.get("exchange")) else UNKNOWN_EXCHANGE
        notes: list[Rejected] = []  # a 'frames' or 'rejected' that is not a list, recorded whole
        rows: list[Rejected] = []
        for f in _items(payload, "frames", notes, now):
            ok = type(f) is list and len(f) == 2 and _valid_ns(f[0]) and isinstance(f[1], str)
            rows.append(Rejected(f[0], reason, f[1]) if ok else Rejected(now, reason, _excerpt(f)))
        rows.extend(_feed_rejected(_items(payload, "rejected", notes, now), now))
        rows.extend(Rejected(n.received_ns, f"{reason} ({n.reason})", n.raw) for n in notes)
    else:
        batch_id, exchange, rows = batch_key(payload), UNKNOWN_EXCHANGE, []
    if not rows:
        rows = [Rejected(now, reason, _excerpt(payload))]
    try:
        with storage.translate_errors(), engine.begin() as conn:
            storage.insert_rejected(conn, rows, exchange=exchange, batch_id=batch_id)
    except TransientStorageError:
        raise
    except StorageError as exc:
        # Nothing known refuses these rows; should something, the payload is still kept, as one row.
        logger.error("batch %s: rejected frames not insertable (%s); recording the payload whole", batch_id, exc)
        rows = [Rejected(now, f"{reason} (frames not insertable: {exc})", _excerpt(payload, None))]
        with storage.translate_errors(), engine.begin() as conn:
            storage.insert_rejected(conn, rows, exchange=exchange, batch_id=batch_id)
    return len(rows)


def _now_ns() -> int:
    return time.time_ns()
