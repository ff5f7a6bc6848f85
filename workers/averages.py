"""Average prices per window (beat runs one task per size in models.vocabulary.WINDOWS_S: 30 s and 1 min):
recompute closed windows idempotently (upsert), catching up on late rows.

A window [start, start + w) is aligned to epoch multiples of w and computed once its end plus a grace has passed.
Each run recomputes (1) every window closed since the previous run's end and (2) every window that received rows or
gaps from transactions the previous run's snapshot did not see (a backlog, a redelivery, a batch committed while that
run computed); so a restart, a second beat or a late batch never leaves a window missing or wrong, and a run costs
what changed, not a fixed lookback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from models.metrics import closed_range, window_start
from workers import storage

__all__ = ["AveragesResult", "compute_averages", "queued_from"]

logger = logging.getLogger(__name__)

# Before a snapshot is recorded (first run after the upgrade that added them): transactions that started before the
# previous run may commit after it; look that much further back.
_COMMIT_MARGIN_S = 120.0
# pg_advisory_xact_lock(key, window_seconds): one averages run per window size at a time ("bf" "av").
_LOCK_KEY = 0x62666176
# The earliest time that got rows or gaps from batches stored since `since` (epoch seconds).
_LATE_SINCE = text(
    "SELECT extract(epoch FROM least("
    "  (SELECT min(min_received_at) FROM ingest_batches WHERE stored_at >= to_timestamp(:since)),"
    "  (SELECT min(start_at) FROM feed_gap_intervals WHERE recorded_at >= to_timestamp(:since))))"
)
# The earliest time that got rows or gaps from transactions the snapshot `seen` did not see. Every transaction below
# the snapshot's xmin had ended when it was taken, so the index range starts there.
_LATE_UNSEEN = text(
    "WITH s AS (SELECT CAST(:seen AS pg_snapshot) AS seen) "
    "SELECT extract(epoch FROM least("
    "  (SELECT min(b.min_received_at) FROM ingest_batches b, s WHERE b.stored_xid >= pg_snapshot_xmin(s.seen)"
    "     AND NOT pg_visible_in_snapshot(b.stored_xid, s.seen)),"
    "  (SELECT min(g.start_at) FROM feed_gap_intervals g, s WHERE g.recorded_xid >= pg_snapshot_xmin(s.seen)"
    "     AND NOT pg_visible_in_snapshot(g.recorded_xid, s.seen))))"
)

# `complete` is false when a feed gap of the symbol overlaps the window: the feed may have missed books in it.
_UPSERT = text(
    """
    INSERT INTO price_average_windows AS w
           (exchange, symbol, window_seconds, window_start, avg_price, samples, complete)
    SELECT b.exchange, b.symbol, :w, b.ws, b.avg_price, b.samples,
           NOT EXISTS (SELECT 1 FROM feed_gap_intervals g
                       WHERE g.exchange = b.exchange AND g.symbol = b.symbol
                         AND g.start_at < b.ws + make_interval(secs => :w) AND g.end_at > b.ws)
    FROM (SELECT exchange, symbol,
                 date_bin(make_interval(secs => :w), received_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS ws,
                 avg(price) AS avg_price, count(*) AS samples
          FROM book_snapshots
          WHERE received_at >= to_timestamp(:lo) AND received_at < to_timestamp(:hi)
            AND price IS NOT NULL AND NOT crossed
          GROUP BY exchange, symbol, ws) b
    ON CONFLICT (exchange, symbol, window_seconds, window_start) DO UPDATE
       SET avg_price = EXCLUDED.avg_price, samples = EXCLUDED.samples, complete = EXCLUDED.complete,
           computed_at = now()
     WHERE (w.avg_price, w.samples, w.complete)
           IS DISTINCT FROM (EXCLUDED.avg_price, EXCLUDED.samples, EXCLUDED.complete)
    """
)


@dataclass(frozen=True, slots=True)
class AveragesResult:
    window_s: int
    from_s: int
    to_s: int
    n_windows: int

    def as_dict(self) -> dict[str, Any]:
        return {"window_s": self.window_s, "from_s": self.from_s, "to_s": self.to_s, "n_windows": self.n_windows}


def compute_averages(
    engine: Engine,
    *,
    window_s: int,
    now_s: float,
    grace_s: float,
    lookback_s: float,
    queued_from_s: float | None = None,
) -> AveragesResult:
    """Upsert every closed `window_s` window that may have changed; returns the range covered, in epoch seconds.
    avg_price = arithmetic mean of `price` over the uncrossed two-sided books received in the window; samples =
    their count; a window without such a book has no row. Raises TransientStorageError when PostgreSQL is down.

    `queued_from_s`: the receive time of the oldest frame still waiting to be stored (None: nothing waits, or not
    worth waiting for). Windows ending after it are left to a later run: computed now they would miss those books,
    show a partial average for a while and be scanned again once the books arrive (draining a backlog, every run
    would rescan every window it covers).

    What may have changed: the windows closed since the previous run, and the windows that got rows or gaps from
    transactions the previous run's snapshot did not see (a backlog, a redelivery, a batch that committed while
    the previous run computed). Runs for one window size take turns (a transaction-scoped advisory lock), so each
    run's snapshot sees everything the previous one saw. `lookback_s` only bounds the first run, and the one
    after an upgrade from a version that recorded no snapshot.
    """
    with storage.translate_errors(), engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k, :w)"), {"k": _LOCK_KEY, "w": window_s})
        # Taken before anything is read: a row committed after it is late for the next run, even if this run's
        # later statements see it too (they then compute its window twice, never not at all).
        snapshot = conn.execute(text("SELECT pg_current_snapshot()::text")).scalar_one()
        progress = conn.execute(
            text(
                "SELECT extract(epoch FROM computed_to), extract(epoch FROM last_run_at), snapshot::text "
                "FROM averages_progress WHERE window_seconds = :w"
            ),
            {"w": window_s},
        ).first()
        done_to: float | None = None
        if progress is None:
            late = conn.execute(_LATE_SINCE, {"since": 0.0}).scalar()  # first run: everything stored so far
            from_s = float(now_s - lookback_s)
        elif progress[2] is None:  # no snapshot recorded yet: a commit margin before the previous run
            late = conn.execute(_LATE_SINCE, {"since": float(progress[1]) - _COMMIT_MARGIN_S}).scalar()
            from_s = min(float(progress[0]), now_s) - lookback_s
        else:
            late = conn.execute(_LATE_UNSEEN, {"seen": progress[2]}).scalar()
            done_to = float(progress[0])
            from_s = done_to
        if late is not None:
            from_s = min(from_s, float(late))
        closing_s = now_s if queued_from_s is None else min(now_s, queued_from_s + grace_s)
        lo, to_s = closed_range(from_s=from_s, now_s=closing_s, window_s=window_s, grace_s=grace_s)
        if done_to is not None and to_s < done_to:  # a task run late: the snapshot it records covers all done
            to_s = int(done_to)
            lo = min(window_start(from_s, window_s), to_s)
        n = 0
        if lo < to_s:
            n = conn.execute(_UPSERT, {"w": window_s, "lo": lo, "hi": to_s}).rowcount
        conn.execute(
            text(
                "INSERT INTO averages_progress (window_seconds, computed_to, last_run_at, snapshot) "
                "VALUES (:w, to_timestamp(:to), to_timestamp(:now), CAST(:snapshot AS pg_snapshot)) "
                "ON CONFLICT (window_seconds) DO UPDATE SET "
                "computed_to = greatest(averages_progress.computed_to, EXCLUDED.computed_to), "
                "last_run_at = greatest(averages_progress.last_run_at, EXCLUDED.last_run_at), "
                "snapshot = EXCLUDED.snapshot"
            ),
            {"w": window_s, "to": to_s, "now": now_s, "snapshot": snapshot},
        )
    return AveragesResult(window_s=window_s, from_s=lo, to_s=to_s, n_windows=n)


def queued_from(oldest_received_ns: int | None, *, now_s: float, wait_s: float) -> float | None:
    """The `queued_from_s` for compute_averages: the oldest queued frame's receive time (epoch s) while it was
    received at most `wait_s` ago, else None. Past that (a backlog longer than `wait_s`, a batch stuck in its
    retries) windows are computed as they are and again when their books arrive: the queue never holds the
    averages more than `wait_s` behind."""
    if oldest_received_ns is None:
        return None
    oldest_s = oldest_received_ns / 1e9
    return oldest_s if oldest_s >= now_s - wait_s else None


def now_s() -> float:
    """Wall-clock seconds since the epoch; read once per task run and passed down."""
    return time.time()
