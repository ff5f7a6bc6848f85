"""The cold archive's writer: each closed UTC day of `order_books` to Parquet (one zstd file per symbol and day, see
models.coldstore for the layout), verified against PostgreSQL, then recorded in the day's manifest (written last,
atomically). Reads only the public view, so the worker role (SELECT on order_books) is enough; deletes nothing in
PostgreSQL (retention, workers.retention, does that)."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, text

from models.coldstore import (
    ArchiveError,
    DayManifest,
    book_path,
    day_bounds,
    day_of_dir,
    manifest_path,
    normalise_archive_url,
)

__all__ = [
    "ARCHIVE_SCHEMA",
    "PARTITION_DAYS_SQL",
    "Archive",
    "ArchiveResult",
    "archive_closed_days",
    "archive_day",
    "closed_days",
    "one_run_at_a_time",
    "rearchive_days",
]

logger = logging.getLogger(__name__)

# A day is closed, and archived, this long after its end: late books (a queue drained after an outage) still land in
# PostgreSQL first. A book arriving later still is caught by verification (counts differ: not verified, retried).
CLOSE_GRACE = timedelta(hours=1)
_ROW_GROUP = 20_000  # books per Parquet row group (and per Arrow batch in memory: ~30 MB at depth20)
_FETCH_ROWS = 2_000

# Prices and quantities as their exact decimal text (PostgreSQL's rendering of the stored numeric): the scale differs
# between symbols and can differ between levels, which decimal128 (one scale per column) could not keep.
ARCHIVE_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("last_update_id", pa.int64(), nullable=False),
        pa.field("depth", pa.int16(), nullable=False),
        pa.field("bid_prices", pa.list_(pa.string()), nullable=False),
        pa.field("bid_quantities", pa.list_(pa.string()), nullable=False),
        pa.field("ask_prices", pa.list_(pa.string()), nullable=False),
        pa.field("ask_quantities", pa.list_(pa.string()), nullable=False),
    ]
)

_COUNTS_SQL = text(
    "SELECT symbol, count(*) FROM order_books WHERE received_at >= :start AND received_at < :end GROUP BY symbol"
)
_ROWS_SQL = text(
    "SELECT exchange, received_at, last_update_id, depth, bid_prices::text[], bid_quantities::text[],"
    " ask_prices::text[], ask_quantities::text[] FROM order_books"
    " WHERE symbol = :symbol AND received_at >= :start AND received_at < :end"
    " ORDER BY received_at, last_update_id, depth"
)
# The stored days, from the daily partitions in the catalog (bookfeed_ensure_partition names them
# book_snapshots_pYYYYMMDD): scanning the books for their days would read every row.
PARTITION_DAYS_SQL = text(
    "SELECT CAST(substring(c.relname FROM '^book_snapshots_p([0-9]{8})$') AS date) AS day, c.relname"
    " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = to_regclass('public.book_snapshots')"
    " AND c.relname ~ '^book_snapshots_p[0-9]{8}$' ORDER BY 1"
)


_TRY_LOCK_SQL = text("SELECT pg_try_advisory_lock(hashtext(:name))")
_UNLOCK_SQL = text("SELECT pg_advisory_unlock(hashtext(:name))")


@contextmanager
def one_run_at_a_time(engine: Engine, name: str) -> Iterator[bool]:
    """A session advisory lock on hashtext(`name`), tried once: yields True while this run holds it (released at the
    end), False when another run holds it (the caller then does nothing)."""
    with engine.connect() as lock:
        if not lock.execute(_TRY_LOCK_SQL, {"name": name}).scalar_one():
            yield False
            return
        try:
            yield True
        finally:
            lock.execute(_UNLOCK_SQL, {"name": name})
            lock.commit()


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """What one run did: days newly verified, days already verified (skipped), days that failed verification."""

    archived: tuple[date, ...]
    skipped: tuple[date, ...]
    failed: tuple[date, ...]

    def as_dict(self) -> dict[str, list[str]]:
        """JSON-ready (a Celery task's result)."""
        return {
            "archived": [d.isoformat() for d in self.archived],
            "skipped": [d.isoformat() for d in self.skipped],
            "failed": [d.isoformat() for d in self.failed],
        }


class Archive:
    """An archive root opened for writing (a directory, created on demand, or a pyarrow filesystem URI)."""

    def __init__(self, url: str) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(normalise_archive_url(url))
        except (pa.ArrowException, ValueError) as exc:
            raise ArchiveError(f"cannot open the archive: {exc}") from None

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def manifest(self, day: date) -> DayManifest | None:
        path = self.path(manifest_path(day))
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as stream:
            return DayManifest.from_json(stream.read().decode("utf-8"))

    def verified_days(self) -> set[date]:
        if self.fs.get_file_info(self.root).type == pafs.FileType.NotFound:
            return set()
        entries = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        days = {day_of_dir(e.base_name) for e in entries if e.type == pafs.FileType.Directory}
        return {d for d in days if d is not None and self.manifest(d) is not None}

    def count_rows(self, relative: str) -> int:
        with self.fs.open_input_file(self.path(relative)) as f:
            return int(pq.ParquetFile(f).metadata.num_rows)

    def write_text(self, relative: str, payload: str) -> None:
        """Write a small file so that readers see the old one or the new one, never a partial one (temporary name in
        the same directory, then a rename: atomic on a local filesystem, a single PUT on object stores)."""
        final = self.path(relative)
        tmp = f"{final.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex}"
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(tmp) as out:
            out.write(payload.encode("utf-8"))
        self.fs.move(tmp, final)


_Row = tuple[Any, ...]  # the columns of ARCHIVE_SCHEMA, in order


def _key(row: _Row) -> tuple[Any, ...]:
    """A stored book's identity within one symbol: (received_at, last_update_id, depth, exchange)."""
    return (row[1], row[2], row[3], row[0])


def _pg_rows(conn: Connection, symbol: str, start: datetime, end: datetime) -> Iterator[_Row]:
    """The symbol's books of [start, end) from order_books, in (received_at, last_update_id, depth) order."""
    result = conn.execution_options(stream_results=True, yield_per=_FETCH_ROWS).execute(
        _ROWS_SQL, {"symbol": symbol, "start": start, "end": end}
    )
    for row in result:
        yield tuple(row)


def _file_rows(archive: Archive, relative: str) -> Iterator[_Row]:
    """The rows of an archived file, in the order written (none when there is no file)."""
    path = archive.path(relative)
    if archive.fs.get_file_info(path).type != pafs.FileType.File:
        return
    with archive.fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_FETCH_ROWS, columns=ARCHIVE_SCHEMA.names):
            yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)


def _distinct(rows: Iterator[_Row]) -> Iterator[_Row]:
    last: tuple[Any, ...] | None = None
    for row in rows:
        if (key := _key(row)) != last:
            yield row
            last = key


def _write_symbol(archive: Archive, conn: Connection, day: date, symbol: str, *, merge: bool) -> tuple[int, int]:
    """One symbol's file of the day, under a temporary name first (dataset readers skip dot files); returns (rows
    written, rows read from PostgreSQL). With `merge`, the rows already archived are kept too: a day retention
    dropped holds, in PostgreSQL, only the books that arrived after (the partition made again for them)."""
    start, end = day_bounds(day)
    read = 0

    def counted(rows: Iterator[_Row]) -> Iterator[_Row]:
        nonlocal read
        for row in rows:
            read += 1
            yield row

    source = counted(_pg_rows(conn, symbol, start, end))
    if merge:
        source = _distinct(heapq.merge(source, _file_rows(archive, book_path(day, symbol)), key=_key))
    final = archive.path(book_path(day, symbol))
    directory = final.rsplit("/", 1)[0]
    tmp = f"{directory}/.tmp-{uuid.uuid4().hex}.parquet"
    archive.fs.create_dir(directory, recursive=True)
    written = 0
    with (
        archive.fs.open_output_stream(tmp) as out,
        pq.ParquetWriter(out, ARCHIVE_SCHEMA, compression="zstd") as writer,
    ):
        while chunk := list(itertools.islice(source, _ROW_GROUP)):
            arrays = [
                pa.array(col, type=f.type) for col, f in zip(zip(*chunk, strict=True), ARCHIVE_SCHEMA, strict=True)
            ]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=ARCHIVE_SCHEMA), row_group_size=_ROW_GROUP)
            written += len(chunk)
    archive.fs.move(tmp, final)
    return written, read


def _counts(engine: Engine, day: date) -> dict[str, int]:
    start, end = day_bounds(day)
    with engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(_COUNTS_SQL, {"start": start, "end": end})}


def archive_day(engine: Engine, archive: Archive, day: date) -> DayManifest:
    """Write, verify and record one UTC day. Each symbol's file is written from one REPEATABLE READ snapshot (one
    transaction per symbol, so no transaction lasts the whole day's export); verification then compares, symbol by
    symbol, the rows written with each file's row count read back from its footer, and the rows read with
    PostgreSQL's count now (a book that arrived meanwhile, or a symbol that appeared, makes them differ). Raises
    ArchiveError, recording nothing, when a count differs. A day without a manifest is written anew; a verified day
    archived again (books arrived after it was archived, or after retention dropped it) keeps its archived rows and
    adds PostgreSQL's, each book once."""
    began = time.monotonic()
    previous = archive.manifest(day)
    written: dict[str, int] = {}
    read: dict[str, int] = {}
    for symbol in sorted(set(_counts(engine, day)) | set(previous.rows if previous else ())):
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                written[symbol], read[symbol] = _write_symbol(archive, conn, day, symbol, merge=previous is not None)
    now_counts = _counts(engine, day)
    in_files = {symbol: archive.count_rows(book_path(day, symbol)) for symbol in written}
    if written != in_files or {s: n for s, n in read.items() if n} != now_counts:
        diff = sorted(s for s in written.keys() | now_counts.keys() if now_counts.get(s, 0) != read.get(s, 0))
        raise ArchiveError(f"archive of {day} not verified: row counts differ for {', '.join(diff[:5])}", day=day)
    manifest = DayManifest(
        day=day,
        rows=in_files,
        archived_at=datetime.now(UTC),
        files={symbol: book_path(day, symbol) for symbol in in_files},
        postgres_rows=sum(now_counts.values()),
    )
    archive.write_text(manifest_path(day), manifest.to_json())
    logger.info(
        "archived day %s: %d books, %d symbols",
        day,
        manifest.total_rows,
        len(in_files),
        extra={"day": day.isoformat(), "n_rows": manifest.total_rows, "duration_ms": _ms(began)},
    )
    return manifest


def _ms(began: float) -> int:
    return int((time.monotonic() - began) * 1000)


def closed_days(engine: Engine, now: datetime) -> list[date]:
    """Days with a partition in PostgreSQL that ended at least CLOSE_GRACE before `now`, oldest first."""
    last_closed = (now - CLOSE_GRACE).astimezone(UTC).date() - timedelta(days=1)
    with engine.connect() as conn:
        days = [day for day, _ in conn.execute(PARTITION_DAYS_SQL)]
    return [d for d in days if d <= last_closed]


def archive_closed_days(
    engine: Engine, archive_url: str, *, now: datetime | None = None, redo: Sequence[date] = ()
) -> ArchiveResult:
    """Archive every closed day not yet verified (idempotent: a verified day is never written again). A day that
    fails verification is logged (WARNING) and retried on the next run; the others go on. One run at a time per
    database (a session advisory lock): a beat task and `bookfeed archive` never write the same day at once; a run
    that finds the lock taken does nothing. `redo`: verified days to archive again anyway (stale: PostgreSQL holds
    more books than their manifest, see workers.retention)."""
    archive = Archive(archive_url)
    archived: list[date] = []
    skipped: list[date] = []
    failed: list[date] = []
    with one_run_at_a_time(engine, "bookfeed_archive") as mine:
        if not mine:
            logger.info("archive: another run holds the lock; nothing done")
            return ArchiveResult((), (), ())
        verified = archive.verified_days()
        for day in closed_days(engine, now or datetime.now(UTC)):
            if day in verified and day not in redo:
                skipped.append(day)
                continue
            try:
                archive_day(engine, archive, day)
                archived.append(day)
            except ArchiveError as exc:
                logger.warning("%s; retried next run", exc, extra={"day": day.isoformat()})
                failed.append(day)
    return ArchiveResult(tuple(archived), tuple(skipped), tuple(failed))


def rearchive_days(engine: Engine, archive_url: str, days: Sequence[date]) -> ArchiveResult:
    """Archive `days` again although verified (their manifests are replaced once the new files verify)."""
    return archive_closed_days(engine, archive_url, redo=days)
