"""Reading the cold archive (Parquet files under BOOKFEED_ARCHIVE_URL, written by workers.archive): which days are
verified, and one symbol's books of one day in (received_at, last_update_id) order, batch by batch (constant memory).
Read-only: never writes or deletes anything in the archive."""

from __future__ import annotations

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

    def iter_rows(self, day: date, symbol: str) -> Iterator[ColdRow]:
        """One symbol's books of a day, in (received_at, last_update_id) order as written."""
        path = self._path(book_path(day, symbol))
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return
        columns = ["received_at", "last_update_id", "bid_prices", "bid_quantities", "ask_prices", "ask_quantities"]
        try:
            with self.fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                    cols = [batch.column(i).to_pylist() for i in range(len(columns))]
                    for t, uid, bp, bq, ap, aq in zip(*cols, strict=True):
                        yield (t.astimezone(UTC), int(uid), bp, bq, ap, aq)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"cannot read {book_path(day, symbol)} from the archive: {exc}", day=day) from None
