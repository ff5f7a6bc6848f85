"""Reading the cold archive (Parquet files under BOOKFEED_ARCHIVE_URL, written by workers.archive): which days are
verified, and one symbol's books of one day in (received_at, last_update_id) order, batch by batch (constant memory).
Read-only: never writes or deletes anything in the archive."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models.coldstore import (
    ArchiveError,
    DayManifest,
    book_path,
    day_of_dir,
    manifest_path,
    normalise_archive_url,
)

__all__ = ["ArchiveReader", "ColdRow"]

# received_at (UTC), last_update_id, bid prices, bid quantities, ask prices, ask quantities (exact text)
ColdRow = tuple[datetime, int, list[str], list[str], list[str], list[str]]

_BATCH_ROWS = 2_000  # rows decoded at a time: a depth20 book is ~1.5 KB in Python objects
_COLUMNS = ["received_at", "last_update_id", "bid_prices", "bid_quantities", "ask_prices", "ask_quantities"]


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def _rows(table: pa.Table | pa.RecordBatch) -> Iterator[ColdRow]:
    cols = [table.column(i).to_pylist() for i in range(len(_COLUMNS))]
    for t, uid, bp, bq, ap, aq in zip(*cols, strict=True):
        yield (_utc(t), int(uid), bp, bq, ap, aq)


def _time_bounds(f: pq.ParquetFile, group: int) -> tuple[datetime, datetime] | None:
    """min and max received_at of one row group from its footer statistics (None when it has none)."""
    meta = f.metadata.row_group(group)
    for j in range(meta.num_columns):
        col = meta.column(j)
        if col.path_in_schema == "received_at":
            stats = col.statistics
            if stats is not None and stats.has_min_max and isinstance(stats.min, datetime):
                return _utc(stats.min), _utc(stats.max)
    return None


class ArchiveReader:
    """One archive root (a directory or a pyarrow filesystem URI such as s3://bucket/prefix)."""

    def __init__(self, url: str) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(normalise_archive_url(url))
        except (pa.ArrowException, ValueError) as exc:
            raise ArchiveError(f"cannot open the archive: {exc}") from None

    def _path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def days(self) -> list[date]:
        """Every day with a directory in the archive (verified or not), oldest first; [] for a missing root."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return []
        entries = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        found = (day_of_dir(e.base_name) for e in entries if e.type == pafs.FileType.Directory)
        return sorted(d for d in found if d is not None)

    def manifest(self, day: date) -> DayManifest | None:
        """The day's manifest, or None when the day is not (yet) verified."""
        path = self._path(manifest_path(day))
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as stream:
            return DayManifest.from_json(stream.read().decode("utf-8"))

    def verified_days(self, start: date | None = None, end: date | None = None) -> dict[date, DayManifest]:
        """Verified days in [start, end] (inclusive, UTC dates), with their manifests. ArchiveError when the
        archive cannot be listed or read (credentials, network)."""
        out: dict[date, DayManifest] = {}
        try:
            for day in self.days():
                if (start is not None and day < start) or (end is not None and day > end):
                    continue
                manifest = self.manifest(day)
                if manifest is not None:
                    out[day] = manifest
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"cannot read the archive: {exc}") from None
        return out

    def count_rows(self, day: date, symbol: str) -> int:
        """Rows in one symbol's file of a day, from the Parquet footer (0 when there is no file)."""
        path = self._path(book_path(day, symbol))
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return 0
        with self.fs.open_input_file(path) as f:
            return int(pq.ParquetFile(f).metadata.num_rows)

    @contextlib.contextmanager
    def _day_file(self, day: date, symbol: str) -> Iterator[pq.ParquetFile | None]:
        """One symbol's file of a day, open (None when there is no such file); a file that cannot be read is an
        ArchiveError."""
        path = self._path(book_path(day, symbol))
        try:
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                yield None
                return
            with self.fs.open_input_file(path) as f:
                yield pq.ParquetFile(f)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"cannot read {book_path(day, symbol)} from the archive: {exc}", day=day) from None

    def iter_rows(self, day: date, symbol: str) -> Iterator[ColdRow]:
        """One symbol's books of a day, in (received_at, last_update_id) order as written."""
        with self._day_file(day, symbol) as pf:
            if pf is not None:
                for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=_COLUMNS):
                    yield from _rows(batch)

    def time_span(self, day: date, symbol: str) -> tuple[datetime, datetime] | None:
        """received_at of the first and the last book in one symbol's file of a day (None: no file, or empty), from
        the footer's statistics (the file is written in time order), else from its received_at column.
        ArchiveError when the file cannot be read."""
        with self._day_file(day, symbol) as pf:
            if pf is None:
                return None
            groups = pf.metadata.num_row_groups
            bounds = [_time_bounds(pf, g) for g in range(groups)]
            if groups and all(b is not None for b in bounds):
                return min(b[0] for b in bounds if b), max(b[1] for b in bounds if b)
            times = [_utc(t) for t in pf.read(columns=["received_at"]).column(0).to_pylist()]
            return (min(times), max(times)) if times else None

    def last_at_or_before(self, day: date, symbol: str, at: datetime) -> ColdRow | None:
        """The last book (by received_at, then last_update_id) of one symbol's file of a day received at or before
        `at`, reading one row group (the newest whose statistics start at or before `at`). None when there is none.
        ArchiveError when the file cannot be read."""
        with self._day_file(day, symbol) as pf:
            if pf is None:
                return None
            for group in reversed(range(pf.metadata.num_row_groups)):
                bounds = _time_bounds(pf, group)
                if bounds is not None and bounds[0] > at:
                    continue
                times = [_utc(t) for t in pf.read_row_group(group, columns=["received_at"]).column(0).to_pylist()]
                k = bisect.bisect_right(times, at)
                if k:  # only that row is turned into Python objects
                    return next(_rows(pf.read_row_group(group, columns=_COLUMNS).slice(k - 1, 1)))
        return None
