"""The cold archive's layout and manifest, shared by its writer (workers.archive) and its readers (api.archive).

Pure: names, paths and the manifest's JSON codec; no I/O. A day is archived as one Parquet file per symbol under
``date=YYYY-MM-DD/symbol=SYMBOL/books.parquet`` (Hive partitioning: DuckDB, Spark, Trino and pyarrow datasets read
it as is) and is *verified* when ``date=YYYY-MM-DD/_manifest.json`` exists: the writer puts the manifest last,
atomically, only after the files' row counts matched PostgreSQL's. Dataset readers skip ``_``-prefixed files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from models.errors import PipelineError

__all__ = [
    "ARCHIVE_FORMAT",
    "ARCHIVE_TASK",
    "BOOKS_FILE",
    "MANIFEST_FILE",
    "ArchiveError",
    "DayManifest",
    "book_path",
    "day_bounds",
    "day_dir",
    "day_of_dir",
    "manifest_path",
    "normalise_archive_url",
]

ARCHIVE_FORMAT = 1  # bumped when the file schema or the layout changes
# The hourly Celery task that archives closed days (workers.tasks.archive_days; beat sends it to the metrics queue).
ARCHIVE_TASK = "bookfeed.archive_days"
BOOKS_FILE = "books.parquet"
MANIFEST_FILE = "_manifest.json"
_DAY_PREFIX = "date="


class ArchiveError(PipelineError):
    """The cold archive cannot be read or written, or a day failed verification (`day` set when known)."""

    def __init__(self, message: str, *, day: date | None = None) -> None:
        super().__init__(message)
        self.day = day


def day_dir(day: date) -> str:
    """``date=2026-11-29``: the directory of one UTC day, relative to the archive root."""
    return f"{_DAY_PREFIX}{day.isoformat()}"


def day_of_dir(name: str) -> date | None:
    """The day of a directory name made by `day_dir`; None for any other name."""
    if not name.startswith(_DAY_PREFIX):
        return None
    try:
        return date.fromisoformat(name[len(_DAY_PREFIX) :])
    except ValueError:
        return None


def book_path(day: date, symbol: str) -> str:
    """The Parquet file of one symbol's books on one UTC day, relative to the archive root."""
    return f"{day_dir(day)}/symbol={symbol}/{BOOKS_FILE}"


def manifest_path(day: date) -> str:
    """The manifest of one UTC day, relative to the archive root; its presence means the day is verified."""
    return f"{day_dir(day)}/{MANIFEST_FILE}"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day as aware datetimes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


@dataclass(frozen=True, slots=True)
class DayManifest:
    """What the archive holds for one UTC day: rows per symbol, each count equal to PostgreSQL's when written."""

    day: date
    rows: dict[str, int]  # symbol -> books in its file (symbols with no book that day have no file)
    archived_at: datetime
    format: int = ARCHIVE_FORMAT
    files: dict[str, str] = field(default_factory=dict)  # symbol -> path relative to the archive root
    # Books PostgreSQL held for the day when it was verified (all of them in the files). Equal to total_rows unless
    # the day was archived again after retention dropped it (the files then keep the books dropped as well).
    postgres_rows: int | None = None

    @property
    def verified_postgres_rows(self) -> int:
        """What PostgreSQL must still hold for the day for the archive to cover it (books are never deleted)."""
        return self.total_rows if self.postgres_rows is None else self.postgres_rows

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": self.format,
                "day": self.day.isoformat(),
                "verified": True,
                "archived_at": self.archived_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "total_rows": self.total_rows,
                "postgres_rows": self.verified_postgres_rows,
                "rows": dict(sorted(self.rows.items())),
                "files": dict(sorted(self.files.items())),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> DayManifest:
        """Parse a manifest; ArchiveError when it is not one this version can read."""
        try:
            doc = json.loads(text)
            fmt = int(doc["format"])
            day = date.fromisoformat(doc["day"])
            if fmt != ARCHIVE_FORMAT or doc.get("verified") is not True:
                raise ArchiveError(f"manifest of {day} has format {fmt} (expected {ARCHIVE_FORMAT}) or no verification")
            return cls(
                day=day,
                rows={str(k): int(v) for k, v in doc["rows"].items()},
                archived_at=datetime.fromisoformat(doc["archived_at"].replace("Z", "+00:00")),
                format=fmt,
                files={str(k): str(v) for k, v in doc.get("files", {}).items()},
                postgres_rows=int(doc["postgres_rows"]) if "postgres_rows" in doc else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArchiveError(f"unreadable manifest: {exc}") from None


def normalise_archive_url(url: str) -> str:
    """A URI pyarrow's ``FileSystem.from_uri`` understands: ``s3://``, ``gs://``, ``file://`` and the like unchanged;
    a plain (possibly relative) directory made absolute. ArchiveError when empty."""
    text = url.strip()
    if not text:
        raise ArchiveError("BOOKFEED_ARCHIVE_URL is empty")
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().absolute())
