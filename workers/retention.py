"""Retention (BOOKFEED_RETENTION_DAYS): detach and drop the daily book partitions older than N days; with an archive
(BOOKFEED_ARCHIVE_URL) only the days it verified and whose row count still equals the manifest's. Partition DDL
needs the tables' owner (the role that runs `bookfeed migrate`): bookfeed_writer, the workers' role, may not drop
anything, so this runs from `bookfeed archive --retention`, never inside a worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from models.coldstore import ArchiveError, book_path
from models.errors import StorageError
from workers.archive import PARTITION_DAYS_SQL, Archive

__all__ = ["RetentionError", "RetentionResult", "apply_retention", "retention_cutoff"]

logger = logging.getLogger(__name__)

_INSUFFICIENT_PRIVILEGE = "42501"
_STALE = "archive stale"
# Late inserts into a day being dropped wait (SHARE lock) instead of landing in a table about to go; ingest of
# other days waits for the parent's lock at most this long, then this run gives up and the next one retries.
_LOCK_TIMEOUT = "5s"


class RetentionError(StorageError):
    """Retention cannot run: the role may not change the schema, or the database refused the DDL."""


@dataclass(frozen=True, slots=True)
class RetentionResult:
    dropped: tuple[date, ...]
    refused: tuple[date, ...]  # older than the limit but not (or no longer) verified by the archive: kept
    stale: tuple[date, ...] = ()  # of those, archived but PostgreSQL holds more books now: archive them again


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


def apply_retention(
    engine: Engine, *, retention_days: int, archive_url: str | None, now: datetime | None = None
) -> RetentionResult:
    """Drop each daily partition of a day before `retention_cutoff` (idempotent: a dropped day is gone, a second
    run finds nothing to do). With `archive_url`, a day is dropped only when its manifest exists, its row count
    equals PostgreSQL's under a lock that holds late inserts back, and each file's footer agrees; other days are
    kept and logged (WARNING). Raises RetentionError when the role may not drop partitions (not the owner)."""
    cutoff = retention_cutoff(now or datetime.now(UTC), retention_days)
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
            if getattr(exc.orig, "pgcode", None) == _INSUFFICIENT_PRIVILEGE:
                raise RetentionError(
                    "retention needs the tables' owner (the role of `bookfeed migrate`), not the worker role"
                ) from None
            raise RetentionError(f"retention of {day} failed: {str(exc.orig).strip()[:200]}") from None
        if reason is None:
            dropped.append(day)
        else:
            logger.warning("retention kept day %s: %s", day, reason, extra={"day": day.isoformat()})
            refused.append(day)
            if reason.startswith(_STALE):
                stale.append(day)
    return RetentionResult(tuple(dropped), tuple(refused), tuple(stale))
