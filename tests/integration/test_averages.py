"""30 s / 60 s averages against a real PostgreSQL: alignment, exclusion, late rows, reruns."""

from __future__ import annotations

import statistics

import pytest
from sqlalchemy import Engine, text

from models.messages import make_batch
from tests.integration._frames import frame, simple_book
from workers import storage
from workers.averages import compute_averages
from workers.envelope import parse_batch
from workers.ingest import ingest_batch

pytestmark = pytest.mark.integration

S = 1_790_000_010  # seconds; S % 60 == 30 and S % 30 == 0
NS = 10**9


def _prices(engine: Engine, w: int) -> dict[int, tuple[float, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT extract(epoch FROM window_start)::bigint, avg_price, samples, "
                "extract(epoch FROM window_end - window_start)::int FROM price_averages "
                "WHERE window_seconds = :w AND symbol = 'BTCUSDT'"
            ),
            {"w": w},
        ).all()
    assert all(r[3] == w for r in rows)
    return {int(r[0]): (r[1], r[2]) for r in rows}


def _book_price(engine: Engine, luid: int) -> float:
    with engine.connect() as conn:
        return float(
            conn.execute(text("SELECT price FROM book_metrics WHERE last_update_id = :l"), {"l": luid}).scalar_one()
        )


def test_windows_align_to_epoch_and_average_the_right_books(clean_db: Engine) -> None:
    # One book every 5 s from S to S+120 (25 books), plus a crossed and a one-sided book that must not count.
    frames = [((S + 5 * k) * NS, simple_book(100 + k, luid=k)) for k in range(25)]
    frames.append(((S + 1) * NS, frame(luid=1000, bids=[("200.0", "1")], asks=[("199.0", "1")])))
    frames.append(((S + 2) * NS, frame(luid=1001, bids=[("200.0", "1")], asks=[])))
    ingest_batch(clean_db, make_batch(batch_id="w", frames=frames))
    now = S + 200
    for w in (30, 60):
        compute_averages(clean_db, window_s=w, now_s=now, grace_s=5, lookback_s=600)
    by_window: dict[int, dict[int, list[float]]] = {30: {}, 60: {}}
    for k in range(25):
        t = S + 5 * k
        for w in (30, 60):
            by_window[w].setdefault(t - t % w, []).append(_book_price(clean_db, k))
    for w in (30, 60):
        got = _prices(clean_db, w)
        expected = {start: ps for start, ps in by_window[w].items() if start + w + 5 <= now}
        assert set(got) == set(expected)
        for start, ps in expected.items():
            assert start % w == 0
            assert got[start][1] == len(ps)
            assert got[start][0] == pytest.approx(statistics.fmean(ps), rel=1e-12)


def test_open_windows_are_not_computed_and_empty_windows_have_no_row(clean_db: Engine) -> None:
    frames = [((S + 50) * NS, simple_book(100, luid=1)), ((S + 170) * NS, simple_book(100, luid=2))]
    ingest_batch(clean_db, make_batch(batch_id="gap", frames=frames))
    compute_averages(clean_db, window_s=60, now_s=S + 172, grace_s=5, lookback_s=600)
    got = _prices(clean_db, 60)
    # The window of S+170 is still open at S+172; those between the two books had none, so no row.
    assert set(got) == {(S + 50) // 60 * 60}


def test_late_rows_and_reruns_correct_windows_without_duplicates(clean_db: Engine) -> None:
    ingest_batch(clean_db, make_batch(batch_id="early", frames=[((S + 20) * NS, simple_book(100, luid=1))]))
    compute_averages(clean_db, window_s=30, now_s=S + 100, grace_s=5, lookback_s=60)
    start = (S + 20) - (S + 20) % 30
    assert _prices(clean_db, 30)[start][1] == 1
    # A backlog: a book of that window is stored much later, beyond the lookback.
    ingest_batch(clean_db, make_batch(batch_id="late", frames=[((S + 21) * NS, simple_book(200, luid=2))]))
    compute_averages(clean_db, window_s=30, now_s=S + 1000, grace_s=5, lookback_s=60)
    avg, samples = _prices(clean_db, 30)[start]
    assert samples == 2
    assert avg == pytest.approx((_book_price(clean_db, 1) + _book_price(clean_db, 2)) / 2, rel=1e-12)
    # Reruns (a second beat, a restart) change nothing and never add rows.
    before = _prices(clean_db, 30)
    for _ in range(3):
        compute_averages(clean_db, window_s=30, now_s=S + 1000, grace_s=5, lookback_s=60)
    assert _prices(clean_db, 30) == before
    with clean_db.connect() as conn:
        dup = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT 1 FROM price_averages GROUP BY exchange, symbol, "
                "window_seconds, window_start HAVING count(*) > 1) d"
            )
        ).scalar_one()
    assert dup == 0


def test_a_run_recomputes_only_the_windows_closed_since_the_previous_one(clean_db: Engine) -> None:
    # 20 minutes of books; the lookback (600 s) bounds only the first run: later runs cost what changed.
    frames = [((S + 5 * k) * NS, simple_book(100 + k % 7, luid=k)) for k in range(240)]
    ingest_batch(clean_db, make_batch(batch_id="twenty-minutes", frames=frames))
    first = compute_averages(clean_db, window_s=30, now_s=S + 600, grace_s=5, lookback_s=600)
    assert first.from_s <= S
    second = compute_averages(clean_db, window_s=30, now_s=S + 700, grace_s=5, lookback_s=600)
    assert (second.from_s, second.to_s) == (first.to_s, S + 690)  # three new windows, not ten minutes again
    again = compute_averages(clean_db, window_s=30, now_s=S + 700, grace_s=5, lookback_s=600)
    assert again.from_s == again.to_s == second.to_s  # nothing changed, nothing read
    late = compute_averages(clean_db, window_s=30, now_s=S + 600, grace_s=5, lookback_s=600)  # a task run late
    assert late.to_s == second.to_s and late.n_windows == 0


def test_a_batch_committed_while_a_run_computed_is_counted_by_the_next_run(clean_db: Engine) -> None:
    ingest_batch(clean_db, make_batch(batch_id="early", frames=[((S + 20) * NS, simple_book(100, luid=1))]))
    start = (S + 20) - (S + 20) % 30
    flight = parse_batch(make_batch(batch_id="in-flight", frames=[((S + 21) * NS, simple_book(200, luid=2))]))
    with clean_db.connect() as conn, conn.begin():  # a worker's transaction, open across the run below
        assert storage.claim_batch(
            conn, batch_id="in-flight", n_books=1, n_rejected=0, min_ns=(S + 21) * NS, max_ns=(S + 21) * NS
        )
        rows: list[str | bytes] = [storage.to_rows(flight.books, exchange=flight.exchange)]
        if flight.columns is not None:
            rows.append(storage.columns_to_rows(flight.columns, exchange=flight.exchange))
        storage.copy_books(conn, *rows)
        compute_averages(clean_db, window_s=30, now_s=S + 100, grace_s=5, lookback_s=60)
        assert _prices(clean_db, 30)[start][1] == 1  # not committed yet: not seen
    # Committed after that run's snapshot; the next run, with nothing newly closed, corrects the window.
    compute_averages(clean_db, window_s=30, now_s=S + 100, grace_s=5, lookback_s=60)
    assert _prices(clean_db, 30)[start][1] == 2


def test_windows_whose_books_still_wait_in_the_queue_are_left_for_a_later_run(clean_db: Engine) -> None:
    # Books every 5 s over S .. S+180 stored, except those from S+95 on, still queued (a backlog draining).
    frames = [((S + 5 * k) * NS, simple_book(100 + k % 7, luid=k)) for k in range(19)]  # S .. S+90
    ingest_batch(clean_db, make_batch(batch_id="stored", frames=frames))
    first = compute_averages(clean_db, window_s=30, now_s=S + 200, grace_s=5, lookback_s=600, queued_from_s=S + 95)
    # S+90 .. S+120 holds a queued book: it and every later window wait; the three before it are whole.
    assert set(_prices(clean_db, 30)) == {S, S + 30, S + 60} and first.to_s == S + 90
    queued = [((S + 5 * k) * NS, simple_book(100 + k % 7, luid=k)) for k in range(19, 37)]  # S+95 .. S+180
    ingest_batch(clean_db, make_batch(batch_id="drained", frames=queued))
    second = compute_averages(clean_db, window_s=30, now_s=S + 200, grace_s=5, lookback_s=600)
    assert second.from_s == S + 90 and second.to_s == S + 180  # the waiting windows, once, not the three before
    got = _prices(clean_db, 30)
    assert set(got) == {S + 30 * i for i in range(6)} and all(samples == 6 for _, samples in got.values())
