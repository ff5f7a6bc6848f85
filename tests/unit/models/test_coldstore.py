"""The cold archive's layout and manifest codec (models.coldstore)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from models.coldstore import (
    ArchiveError,
    DayManifest,
    book_path,
    day_bounds,
    day_of_dir,
    manifest_path,
    normalise_archive_url,
)

pytestmark = pytest.mark.unit

DAY = date(2026, 11, 29)


def test_layout_is_hive_partitioned_by_date_then_symbol() -> None:
    assert book_path(DAY, "BTCUSDT") == "date=2026-11-29/symbol=BTCUSDT/books.parquet"
    assert manifest_path(DAY) == "date=2026-11-29/_manifest.json"  # "_": dataset readers skip it
    assert day_of_dir("date=2026-11-29") == DAY
    assert day_of_dir("date=2026-13-01") is None and day_of_dir("_manifests") is None
    assert day_bounds(DAY) == (datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))


def test_manifest_round_trips() -> None:
    m = DayManifest(
        day=DAY,
        rows={"BTCUSDT": 5, "ETHUSDT": 2},
        archived_at=datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC),
        files={"BTCUSDT": book_path(DAY, "BTCUSDT"), "ETHUSDT": book_path(DAY, "ETHUSDT")},
        postgres_rows=3,  # archived again after retention: PostgreSQL held only the late books
    )
    doc = json.loads(m.to_json())
    assert doc["verified"] is True and doc["total_rows"] == 7 and doc["archived_at"] == "2026-11-30T01:02:03Z"
    assert DayManifest.from_json(m.to_json()) == m
    del doc["postgres_rows"]  # a first archive: PostgreSQL held what the files hold
    assert DayManifest.from_json(json.dumps(doc)).verified_postgres_rows == 7


@pytest.mark.parametrize(
    "text",
    ["", "{}", '{"format": 99, "day": "2026-11-29", "verified": true, "rows": {}, "archived_at": "2026-11-30T00:00Z"}',
     '{"format": 1, "day": "2026-11-29", "verified": false, "rows": {}, "archived_at": "2026-11-30T00:00Z"}',
     '{"format": 1, "day": "x", "verified": true, "rows": {}, "archived_at": "2026-11-30T00:00Z"}'],
)  # fmt: skip
def test_a_manifest_this_version_cannot_trust_is_refused(text: str) -> None:
    with pytest.raises(ArchiveError):
        DayManifest.from_json(text)


def test_archive_urls() -> None:
    assert normalise_archive_url("s3://bucket/books/") == "s3://bucket/books"
    assert normalise_archive_url("relative/dir").startswith("/")
    with pytest.raises(ArchiveError):
        normalise_archive_url("  ")
