"""Feed gaps are stored with their batch and mark overlapping average windows incomplete."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from models.messages import make_batch
from tests.integration._frames import simple_book
from workers.averages import compute_averages
from workers.ingest import ingest_batch

pytestmark = pytest.mark.integration

S = 1_790_000_010  # S % 60 == 30
NS = 10**9


def _complete(engine: Engine, w: int) -> dict[int, bool]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT extract(epoch FROM window_start)::bigint, complete FROM price_averages "
                "WHERE window_seconds = :w AND symbol = 'BTCUSDT'"
            ),
            {"w": w},
        ).all()
    return {int(start): bool(c) for start, c in rows}


def test_gaps_are_stored_once_and_mark_overlapping_windows_incomplete(clean_db: Engine) -> None:
    books = [((S + 5 * k) * NS, simple_book(100, luid=k)) for k in range(24)]  # S .. S+115
    gap = ("btcusdt@depth20", (S + 42) * NS, (S + 47) * NS, "reconnected: server closed the connection")
    other = ("ethusdt@depth20", (S + 70) * NS, (S + 75) * NS, "stalled")
    batch = make_batch(batch_id="g1", frames=books, gaps=[gap, other])
    ingest_batch(clean_db, batch)
    ingest_batch(clean_db, batch)  # redelivered: nothing twice
    with clean_db.connect() as conn:
        rows = conn.execute(text("SELECT symbol, stream, reason FROM feed_gaps ORDER BY symbol")).all()
    assert [tuple(r) for r in rows] == [
        ("BTCUSDT", "btcusdt@depth20", "reconnected: server closed the connection"),
        ("ETHUSDT", "ethusdt@depth20", "stalled"),
    ]
    compute_averages(clean_db, window_s=30, now_s=S + 200, grace_s=5, lookback_s=600)
    got = _complete(clean_db, 30)
    gap_window = (S + 42) // 30 * 30
    assert got[gap_window] is False
    assert all(c for start, c in got.items() if start != gap_window)  # ETHUSDT's gap does not touch BTCUSDT


def test_a_gap_reported_after_its_window_was_computed_corrects_it(clean_db: Engine) -> None:
    ingest_batch(clean_db, make_batch(batch_id="b", frames=[((S + 1) * NS, simple_book(100, luid=1))]))
    compute_averages(clean_db, window_s=30, now_s=S + 100, grace_s=5, lookback_s=60)
    assert _complete(clean_db, 30) == {S: True}
    late_gap = ("btcusdt@depth20", (S + 10) * NS, (S + 12) * NS, "feed restarted")
    ingest_batch(clean_db, make_batch(batch_id="late", frames=[], gaps=[late_gap]))
    compute_averages(clean_db, window_s=30, now_s=S + 1000, grace_s=5, lookback_s=60)
    assert _complete(clean_db, 30) == {S: False}


def test_malformed_gaps_are_ignored_not_fatal(clean_db: Engine) -> None:
    batch = make_batch(batch_id="bad-gaps", frames=[(S * NS, simple_book(100, luid=1))])
    batch["gaps"] = [["btcusdt@depth20", 5, 1, "end before start"], ["nonsense"], ["x@trade", 1, 2, "r"]]
    result = ingest_batch(clean_db, batch)
    assert result.n_books == 1
    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM feed_gaps")).scalar_one() == 0
