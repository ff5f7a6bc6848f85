"""Retention prunes ingest_batches (workers.retention.prune_batches): only rows whose books are all older than the
cutoff, stored beyond the redelivery horizon and seen by the averages; in chunks; idempotent; as the owner only."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from models.messages import make_batch
from models.vocabulary import WINDOWS_S
from tests.conftest import empty_data_tables
from tests.integration._frames import simple_book
from workers.averages import compute_averages
from workers.beat import averages_lag_s
from workers.ingest import ingest_batch
from workers.retention import REDELIVERY_HORIZON, RetentionError, apply_retention, prune_batches, retention_cutoff

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
DAYS = 10  # retention longer than the redelivery horizon: each rule keeps a row of its own below
CUTOFF = retention_cutoff(NOW, DAYS)
D = timedelta(days=1)


@pytest.fixture
def batches_db(own_db: Engine) -> Engine:
    empty_data_tables(own_db)
    return own_db


def _add(engine: Engine, *ids: str, stored_at: datetime, books: tuple[datetime, datetime] | None) -> None:
    """ingest_batches rows as workers.storage.claim_batch writes them, with a chosen stored_at."""
    lo, hi = books or (None, None)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ingest_batches (batch_id, stored_at, min_received_at, max_received_at, n_books, "
                "n_rejected) VALUES (:id, :stored_at, :lo, :hi, 1, 0)"
            ),
            [{"id": i, "stored_at": stored_at, "lo": lo, "hi": hi} for i in ids],
        )


def _ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(r) for r in conn.execute(text("SELECT batch_id FROM ingest_batches")).scalars()}


def _record_averages_snapshot(engine: Engine, *, last_run_at: datetime, snapshot: bool = True) -> None:
    """averages_progress as workers.averages leaves it: the snapshot of a run taken now."""
    with engine.begin() as conn:
        for w in WINDOWS_S:
            conn.execute(
                text(
                    "INSERT INTO averages_progress (window_seconds, computed_to, last_run_at, snapshot) "
                    "VALUES (:w, :t, :t, CASE WHEN :snap THEN pg_current_snapshot() END) "
                    "ON CONFLICT (window_seconds) DO UPDATE SET last_run_at = EXCLUDED.last_run_at, "
                    "snapshot = EXCLUDED.snapshot"
                ),
                {"w": w, "t": last_run_at, "snap": snapshot},
            )


def test_retention_deletes_only_the_batches_no_redelivery_can_need(
    batches_db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    old_books = (NOW - 13 * D, NOW - 12 * D)
    _add(batches_db, "old", stored_at=NOW - 12 * D, books=old_books)
    _add(batches_db, "old-rejected-whole", stored_at=NOW - 12 * D, books=None)  # no received_at recorded
    # Kept: books newer than the cutoff (its midnight lies 10.5 days back), though stored beyond the horizon...
    _add(batches_db, "young-books", stored_at=NOW - 8 * D, books=(NOW - 9 * D, NOW - 9 * D))
    _add(batches_db, "straddles", stored_at=NOW - 10 * D, books=(NOW - 11 * D, NOW - 10 * D))
    # ...old books stored within the redelivery horizon (a backlog drained late)...
    _add(batches_db, "backlog", stored_at=NOW - REDELIVERY_HORIZON + timedelta(hours=1), books=old_books)
    # ...and a recent batch without books.
    _add(batches_db, "recent-rejected-whole", stored_at=NOW - D, books=None)
    # A clock ahead: stored before the cutoff, books after it.
    _add(batches_db, "skewed-clock", stored_at=NOW - 11 * D, books=(NOW - 10 * D, NOW - 10 * D))
    kept = {"young-books", "straddles", "backlog", "recent-rejected-whole", "skewed-clock"}

    with caplog.at_level(logging.INFO, logger="workers.retention"):
        result = apply_retention(batches_db, retention_days=DAYS, archive_url=None, now=NOW)
    assert _ids(batches_db) == kept
    assert result.batches_deleted == 2
    assert any("retention deleted 2 ingest batches" in r.getMessage() for r in caplog.records)

    # Idempotent: a second run finds nothing more.
    assert apply_retention(batches_db, retention_days=DAYS, archive_url=None, now=NOW).batches_deleted == 0
    assert _ids(batches_db) == kept
    # A retention shorter than the redelivery horizon: the horizon decides. Stored more than 7 days ago: gone...
    shorter = apply_retention(batches_db, retention_days=3, archive_url=None, now=NOW)
    assert _ids(batches_db) == {"backlog", "recent-rejected-whole"} and shorter.batches_deleted == 3
    # ...and the backlog too once its 7 days have passed.
    assert prune_batches(batches_db, cutoff=retention_cutoff(NOW, 3), now=NOW + timedelta(hours=2)) == 1
    assert _ids(batches_db) == {"recent-rejected-whole"}


def test_a_redelivery_within_the_horizon_is_still_a_no_op(batches_db: Engine) -> None:
    """A batch of old books stored just now (a queue drained after an outage) keeps its row through retention."""
    real_now = datetime.now(UTC)
    old_ns = int((real_now - 12 * D).timestamp()) * 10**9
    batch = make_batch(batch_id=f"late-{time.time_ns()}", frames=[(old_ns, simple_book(100.0, luid=1))])
    assert not ingest_batch(batches_db, batch).duplicate
    assert apply_retention(batches_db, retention_days=DAYS, archive_url=None, now=real_now).batches_deleted == 0
    assert ingest_batch(batches_db, batch).duplicate  # the claim still finds it
    # Once the cutoff has passed the day it was stored (and so the horizon), it goes.
    later = real_now + (DAYS + 1) * D
    assert prune_batches(batches_db, cutoff=retention_cutoff(later, DAYS), now=later) == 1


def test_deletes_in_chunks_across_equal_stored_at(batches_db: Engine) -> None:
    stored_at = NOW - 20 * D
    old = [f"old-{i:02d}" for i in range(25)]
    _add(batches_db, *old, stored_at=stored_at, books=(NOW - 21 * D, NOW - 21 * D))  # one stored_at for all
    _add(batches_db, "skewed-clock", stored_at=stored_at, books=(NOW, NOW))  # scanned, kept, never rescanned
    deletes: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "DELETE FROM ingest_batches" in statement:
            deletes.append(statement)

    event.listen(batches_db, "before_cursor_execute", count)
    try:
        assert prune_batches(batches_db, cutoff=CUTOFF, now=NOW, chunk=4) == 25
    finally:
        event.remove(batches_db, "before_cursor_execute", count)
    assert len(deletes) == 7  # six full chunks, then one of a single row ends the run
    assert _ids(batches_db) == {"skewed-clock"}


def test_keeps_what_the_averages_have_not_seen(batches_db: Engine, caplog: pytest.LogCaptureFixture) -> None:
    # The averages last ran before these rows were stored (stalled for longer than the horizon).
    _record_averages_snapshot(batches_db, last_run_at=NOW - 12 * D)
    _add(batches_db, "unseen", stored_at=NOW - 12 * D, books=(NOW - 13 * D, NOW - 12 * D))
    with caplog.at_level(logging.WARNING, logger="workers.retention"):
        assert prune_batches(batches_db, cutoff=CUTOFF, now=NOW) == 0
    assert "until the averages have seen them" in caplog.text
    # A run from before snapshots were recorded: nothing goes until it records one.
    _record_averages_snapshot(batches_db, last_run_at=NOW, snapshot=False)
    assert prune_batches(batches_db, cutoff=CUTOFF, now=NOW) == 0
    # Once a run has seen it, it goes.
    _record_averages_snapshot(batches_db, last_run_at=NOW)
    assert prune_batches(batches_db, cutoff=CUTOFF, now=NOW) == 1 and _ids(batches_db) == set()


def test_averages_and_the_beat_watch_work_after_pruning(batches_db: Engine) -> None:
    real_now = datetime.now(UTC)
    _add(batches_db, *(f"old-{i}" for i in range(5)), stored_at=real_now - 30 * D, books=(NOW - 31 * D, NOW - 31 * D))
    recent_ns = int(real_now.timestamp() - 300) * 10**9
    frames = [(recent_ns + k * 10**9, simple_book(100.0 + k, luid=k + 1)) for k in range(3)]
    ingest_batch(batches_db, make_batch(batch_id=f"recent-{time.time_ns()}", frames=frames))
    assert prune_batches(batches_db, cutoff=retention_cutoff(real_now, DAYS), now=real_now) == 5
    # The first averages run looks back from what is left; the recent books get their windows.
    result = compute_averages(batches_db, window_s=60, now_s=time.time(), grace_s=5.0, lookback_s=600.0)
    assert result.n_windows >= 1
    lag = averages_lag_s(batches_db, recent_s=3600.0)
    assert lag is not None and lag < 120
    assert prune_batches(batches_db, cutoff=retention_cutoff(real_now, DAYS), now=real_now) == 0
    assert compute_averages(batches_db, window_s=60, now_s=time.time(), grace_s=5.0, lookback_s=600.0).n_windows == 0


def test_only_the_owner_may_delete_batches(batches_db: Engine) -> None:
    with batches_db.connect() as conn:
        for table in ("ingest_batches", "book_snapshots", "rejected_frames", "averages_progress"):
            may = conn.execute(text("SELECT has_table_privilege('bookfeed_writer', :t, 'DELETE')"), {"t": table})
            assert not may.scalar(), f"the workers' role may delete from {table}"
    _add(batches_db, "old", stored_at=NOW - 12 * D, books=(NOW - 13 * D, NOW - 12 * D))
    writer = create_engine(batches_db.url, poolclass=NullPool)

    @event.listens_for(writer, "connect")
    def _as_writer(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET ROLE bookfeed_writer")

    with pytest.raises(RetentionError, match="owner"):
        prune_batches(writer, cutoff=CUTOFF, now=NOW)
    writer.dispose()
    assert _ids(batches_db) == {"old"}
