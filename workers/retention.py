"""Retention (BOOKFEED_RETENTION_DAYS): detach and drop the daily book partitions older than N days; with an archive
(BOOKFEED_ARCHIVE_URL) only the days it verified and whose row count still equals the manifest's; and delete the
ingest_batches rows no redelivery can need any more. Partition DDL and DELETE need the tables' owner (the role that
runs `bookfeed migrate`): bookfeed_writer, the workers' role, may neither drop nor delete anything, so this runs
in beat's hourly retention task on the `maintenance` queue, which only a worker connected as the owner consumes
(workers.tasks), or from `bookfeed archive`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from models.coldstore import ArchiveError, book_path
from models.errors import StorageError
from models.vocabulary import WINDOWS_S
from workers.archive import PARTITION_DAYS_SQL, Archive, one_run_at_a_time, rearchive_days

__all__ = [
    "BATCH_CHUNK",
    "REDELIVERY_HORIZON",
    "RetentionError",
    "RetentionResult",
    "RetentionRun",
    "apply_retention",
    "prune_batches",
    "retention_cutoff",
    "run_retention",
]

logger = logging.getLogger(__name__)

_INSUFFICIENT_PRIVILEGE = "42501"
_STALE = "archive stale"
# Late inserts into a day being dropped wait (SHARE lock) instead of landing in a table about to go; ingest of
# other days waits for the parent's lock at most this long, then this run gives up and the next one retries.
_LOCK_TIMEOUT = "5s"
# One retention run at a time per database (as the archive's): a second one would wait on a partition the first is
# dropping and then fail on a table that no longer exists.
_LOCK_NAME = "bookfeed_retention"

# An ingest_batches row is what makes a redelivered batch a no-op (workers.storage.claim_batch), so it must outlive
# every delivery of its batch. Nothing in Redis expires: a batch stored but still in the outbox (its worker died
# between COMMIT and workers.outbox's complete, or Redis refused that call) is delivered again by kombu's visibility
# timeout (BOOKFEED_VISIBILITY_TIMEOUT_S) or beat's reaper within minutes while a worker consumes the ingest queue,
# and only when one does again otherwise. So a row is kept this long after it was stored: far beyond any
# redelivery of a running deployment. Workers stopped longer still (`bookfeed status` says down) could, on restart,
# store such a batch's books again only into a day retention dropped (elsewhere their unique key refuses them): the
# day comes back like one a very late book makes, and archiving it again keeps each book once.
REDELIVERY_HORIZON = timedelta(days=7)
# Rows deleted per transaction: a backlog of millions never holds one long transaction (or its row locks, which
# a redelivery's claim of the same batch id would wait for) and each chunk starts where the last one ended.
BATCH_CHUNK = 10_000
# What the averages have seen (workers.averages): they recompute the windows of rows their last snapshot did not
# see, found by stored_xid. A row is deleted only once every window size's last run saw it.
_AVERAGES_SEEN = text(
    "SELECT count(*) FILTER (WHERE snapshot IS NULL), min(pg_snapshot_xmin(snapshot))::text, min(last_run_at) "
    "FROM averages_progress WHERE window_seconds = ANY(:windows)"
)
# One chunk, oldest stored first through the index ingest_batches_stored_at, each row then found by its key (a join
# instead is planned as a scan of the whole table per chunk). A batch without books (rejected whole, gaps only) has
# no received_at: its stored_at stands in. A row whose stored_xid is below the lowest xmin of the averages' last
# snapshots was seen by every one of them; rows from before stored_xid existed (NULL) were seen long ago.
_DELETE_CHUNK = text(
    """
    WITH gone AS (
        DELETE FROM ingest_batches WHERE batch_id = ANY(ARRAY(
            SELECT batch_id FROM ingest_batches
            WHERE stored_at >= :from_at AND stored_at < :stored_before
              AND coalesce(max_received_at, stored_at) < :cutoff
              AND (CAST(:seen_xmin AS xid8) IS NULL OR stored_xid IS NULL OR stored_xid < CAST(:seen_xmin AS xid8))
            ORDER BY stored_at
            LIMIT :chunk))
        RETURNING stored_at)
    SELECT count(*), max(stored_at) FROM gone
    """
)


class RetentionError(StorageError):
    """Retention cannot run: the role may not change the schema or delete, or the database refused the DDL."""


@dataclass(frozen=True, slots=True)
class RetentionResult:
    dropped: tuple[date, ...]
    refused: tuple[date, ...]  # older than the limit but not (or no longer) verified by the archive: kept
    stale: tuple[date, ...] = ()  # of those, archived but PostgreSQL holds more books now: archive them again
    batches_deleted: int = 0  # ingest_batches rows deleted (prune_batches)


def retention_cutoff(now: datetime, days: int) -> date:
    """The oldest day kept: today (UTC) minus `days`; every older day is dropped."""
    return now.astimezone(UTC).date() - timedelta(days=days)


def _verified(archive: Archive, day: date, stored: int) -> str | None:
    """Why `day` may not be dropped, or None when the archive holds it verified with `stored` books."""
    try:
        manifest = archive.manifest(day)
        if manifest is None:
            return "not archived (no manifest)"
        if manifest.verified_postgres_rows != stored:
            return f"{_STALE}: PostgreSQL holds {stored} books, {manifest.verified_postgres_rows} when archived"
        for symbol, rows in manifest.rows.items():
            if archive.count_rows(book_path(day, symbol)) != rows:
                return f"the archive file of {symbol} does not hold {rows} books"
    except (ArchiveError, OSError) as exc:
        return f"archive unreadable: {exc}"
    return None


def _drop_one(engine: Engine, day: date, relname: str, archive: Archive | None) -> str | None:
    """Drop one partition in one transaction; returns why it was kept, or None once dropped."""
    name = engine.dialect.identifier_preparer.quote(relname)
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": _LOCK_TIMEOUT})
        conn.execute(text(f"LOCK TABLE public.{name} IN SHARE MODE"))
        stored = int(conn.execute(text(f"SELECT count(*) FROM public.{name}")).scalar_one())
        if archive is not None and (reason := _verified(archive, day, stored)) is not None:
            return reason
        conn.execute(text(f"ALTER TABLE public.book_snapshots DETACH PARTITION public.{name}"))
        conn.execute(text(f"DROP TABLE public.{name}"))
    logger.info(
        "retention dropped day %s (%s, %d books)%s",
        day,
        relname,
        stored,
        "" if archive is not None else ", not archived: BOOKFEED_ARCHIVE_URL is unset",
        extra={"day": day.isoformat(), "n_books": stored},
    )
    return None


def _cutoff_at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _retention_error(exc: DBAPIError, what: str) -> RetentionError:
    if getattr(exc.orig, "pgcode", None) == _INSUFFICIENT_PRIVILEGE:
        return RetentionError("retention needs the tables' owner (the role of `bookfeed migrate`), not the worker role")
    return RetentionError(f"{what} failed: {str(exc.orig).strip()[:200]}")


def _averages_seen_xmin(engine: Engine, *, stored_before: datetime) -> tuple[bool, str | None]:
    """(may prune, xid8 below which the averages saw every row or None when no averages ran yet)."""
    with engine.connect() as conn:
        no_snapshot, xmin, last_run = conn.execute(_AVERAGES_SEEN, {"windows": list(WINDOWS_S)}).one()
    if no_snapshot:  # a run from before snapshots were recorded: its next run records one
        logger.info("retention kept every ingest batch: the averages have not recorded what they saw yet")
        return False, None
    if last_run is not None and last_run < stored_before:
        logger.warning(
            "averages last ran at %s: the ingest batches stored since are kept until the averages have seen them",
            last_run.isoformat(),
        )
    return True, None if xmin is None else str(xmin)


def prune_batches(
    engine: Engine,
    *,
    cutoff: date,
    now: datetime,
    horizon: timedelta = REDELIVERY_HORIZON,
    chunk: int = BATCH_CHUNK,
) -> int:
    """Delete the ingest_batches rows of batches whose books all precede `cutoff` (UTC midnight), stored before it
    too and more than `horizon` before `now` (no redelivery can come; see REDELIVERY_HORIZON), and seen by every
    averages run. `chunk` rows per transaction; idempotent. Returns the rows deleted. Raises RetentionError when
    the role may not delete (not the owner) or the database refuses."""
    t0 = time.perf_counter()
    cutoff_at = _cutoff_at(cutoff)
    # Stored before the cutoff too: the rows each run scans (by stored_at) are then nearly all deleted, where rows
    # stored since the cutoff, whose books are nearly all newer, would be read again by every run. A batch of older
    # books stored late goes once the cutoff passes its stored_at.
    stored_before = min(now - horizon, cutoff_at)
    params: dict[str, object] = {"cutoff": cutoff_at, "stored_before": stored_before, "chunk": chunk}
    params["from_at"] = datetime(1, 1, 1, tzinfo=UTC)
    deleted = 0
    try:
        may_prune, params["seen_xmin"] = _averages_seen_xmin(engine, stored_before=stored_before)
        while may_prune:
            with engine.begin() as conn:
                n, last = conn.execute(_DELETE_CHUNK, params).one()
            deleted += n
            if n < chunk:
                break
            params["from_at"] = last  # earlier rows are gone or are kept: never scanned again
    except DBAPIError as exc:
        raise _retention_error(exc, "deleting old ingest batches") from None
    logger.info(
        "retention deleted %d ingest batches (books before %s, stored before %s)",
        deleted,
        cutoff,
        stored_before.isoformat(),
        extra={"n_rows": deleted, "duration_ms": round((time.perf_counter() - t0) * 1000, 1)},
    )
    return deleted


def apply_retention(
    engine: Engine, *, retention_days: int, archive_url: str | None, now: datetime | None = None
) -> RetentionResult:
    """Drop each daily partition of a day before `retention_cutoff` (idempotent: a dropped day is gone, a second
    run finds nothing to do). With `archive_url`, a day is dropped only when its manifest exists, its row count
    equals PostgreSQL's under a lock that holds late inserts back, and each file's footer agrees; other days are
    kept and logged (WARNING). Then deletes the ingest_batches rows that can no longer matter (prune_batches).
    Raises RetentionError when the role may not drop partitions or delete rows (not the owner)."""
    now = now or datetime.now(UTC)
    cutoff = retention_cutoff(now, retention_days)
    archive = Archive(archive_url) if archive_url else None
    with engine.connect() as conn:
        partitions = [(day, str(rel)) for day, rel in conn.execute(PARTITION_DAYS_SQL) if day < cutoff]
    dropped: list[date] = []
    refused: list[date] = []
    stale: list[date] = []
    for day, relname in partitions:
        try:
            reason = _drop_one(engine, day, relname, archive)
        except DBAPIError as exc:
            raise _retention_error(exc, f"retention of {day}") from None
        if reason is None:
            dropped.append(day)
        else:
            logger.warning("retention kept day %s: %s", day, reason, extra={"day": day.isoformat()})
            refused.append(day)
            if reason.startswith(_STALE):
                stale.append(day)
    deleted = prune_batches(engine, cutoff=cutoff, now=now)
    return RetentionResult(tuple(dropped), tuple(refused), tuple(stale), deleted)


@dataclass(frozen=True, slots=True)
class RetentionRun:
    """One retention run: what apply_retention did, and the stale days archived again."""

    retention: RetentionResult
    rearchived: tuple[date, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (a Celery task's result)."""
        r = self.retention
        return {
            "dropped": [d.isoformat() for d in r.dropped],
            "kept": [d.isoformat() for d in r.refused],
            "rearchived": [d.isoformat() for d in self.rearchived],
            "batches_deleted": r.batches_deleted,
        }


def run_retention(
    engine: Engine, *, retention_days: int, archive_url: str | None, now: datetime | None = None
) -> RetentionRun:
    """apply_retention, then archive again the days it kept as stale (books arrived after their archive), so that
    the next run may drop them: what beat's hourly task and `bookfeed archive` run. Idempotent. One run at a time per
    database (a session advisory lock): a run that finds it taken (beat's task and `bookfeed archive` at once) does
    nothing. Raises RetentionError when the role is not the tables' owner."""
    with one_run_at_a_time(engine, _LOCK_NAME) as mine:
        if not mine:
            logger.info("retention: another run holds the lock; nothing done")
            return RetentionRun(RetentionResult((), ()))
        result = apply_retention(engine, retention_days=retention_days, archive_url=archive_url, now=now)
        if not (archive_url and result.stale):
            return RetentionRun(result)
        return RetentionRun(result, rearchive_days(engine, archive_url, result.stale).archived)
