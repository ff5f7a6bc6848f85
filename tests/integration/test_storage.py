"""COPY round-trips, idempotency and rejection against a real PostgreSQL."""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Row, text

from models.book import BookSnapshot, parse_frame
from models.errors import DuplicateRowError
from models.messages import make_batch
from models.metrics import book_metrics
from models.tables import book_snapshots
from tests.factories import make_book
from tests.integration._frames import diff_depth_frame, fixture_frames, frame, simple_book
from tests.unit.models.test_encoding import PLAIN, uniform_books
from tests.unit.workers.test_storage_rows import ANY_TEXT
from workers.envelope import parse_batch
from workers.ingest import ingest_batch
from workers.storage import clean_text, copy_books, ensure_partitions, to_rows

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000_000_000  # 2026-09-21T14:13:20Z in ns


def _count(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def test_fixture_frames_round_trip_exactly(clean_db: Engine) -> None:
    frames = fixture_frames()
    result = ingest_batch(clean_db, make_batch(batch_id="rt", frames=[(T0 + i, f) for i, f in enumerate(frames)]))
    assert (result.n_books, result.n_rejected) == (len(frames), 0)
    with clean_db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT symbol, last_update_id, bid_prices::text[], bid_quantities::text[], ask_prices::text[], "
                "ask_quantities::text[], received_at FROM order_books ORDER BY received_at"
            )
        ).all()
    assert len(rows) == len(frames)
    for i, (raw, row) in enumerate(zip(frames, rows, strict=True)):
        msg = json.loads(raw)
        data = msg["data"]
        assert row.symbol == msg["stream"].split("@")[0].upper()
        assert row.last_update_id == data["lastUpdateId"]
        # Values exactly as sent, trailing zeros included, levels in the order sent.
        assert list(row.bid_prices) == [p for p, _ in data["bids"]]
        assert list(row.bid_quantities) == [q for _, q in data["bids"]]
        assert list(row.ask_prices) == [p for p, _ in data["asks"]]
        assert list(row.ask_quantities) == [q for _, q in data["asks"]]
        assert int(row.received_at.timestamp() * 1e6) == (T0 + i) // 1000


def test_metrics_are_exact_and_prices_match_decimal(clean_db: Engine) -> None:
    raw = frame(
        luid=7,
        bids=[("100.10000000", "1.00000000"), ("100.00000000", "3.00000000")],
        asks=[("100.30000000", "2.00000000"), ("101.00000000", "2.00000000")],
    )
    ingest_batch(clean_db, make_batch(batch_id="m", frames=[(T0, raw)]))
    with clean_db.connect() as conn:
        m = conn.execute(
            text("SELECT best_bid, best_ask, spread, bid_vwap, ask_vwap, price, crossed FROM book_metrics")
        ).one()
    assert m.best_bid == Decimal("100.10000000") and str(m.spread) == "0.20000000"
    bid = (Decimal("100.1") * 1 + Decimal("100") * 3) / 4
    ask = (Decimal("100.3") * 2 + Decimal("101") * 2) / 4
    assert m.bid_vwap == pytest.approx(float(bid), rel=1e-12)
    assert m.ask_vwap == pytest.approx(float(ask), rel=1e-12)
    assert m.price == pytest.approx(float((bid + ask) / 2), rel=1e-12)
    assert m.crossed is False


def test_same_batch_twice_stores_once(clean_db: Engine) -> None:
    batch = make_batch(
        batch_id="dup", frames=[(T0 + i, simple_book(100 + i, luid=i)) for i in range(50)] + [(T0 + 99, "not json")]
    )
    first = ingest_batch(clean_db, batch)
    second = ingest_batch(clean_db, batch)
    assert (first.n_books, first.duplicate, second.duplicate) == (50, False, True)
    assert _count(clean_db, "SELECT count(*) FROM order_books") == 50
    assert _count(clean_db, "SELECT count(*) FROM rejected_messages") == 1


def test_frames_republished_in_another_batch_are_not_stored_twice(clean_db: Engine) -> None:
    frames = [(T0 + i, simple_book(100 + i, luid=i)) for i in range(20)]
    ingest_batch(clean_db, make_batch(batch_id="a", frames=frames[:12]))
    ingest_batch(clean_db, make_batch(batch_id="b", frames=[*frames[8:], (T0 + 99, "{}")]))
    assert _count(clean_db, "SELECT count(*) FROM order_books") == 20
    assert _count(clean_db, "SELECT count(DISTINCT last_update_id) FROM order_books") == 20
    assert _count(clean_db, "SELECT count(*) FROM rejected_messages") == 1


def test_copy_of_a_stored_frame_raises_our_duplicate_error(clean_db: Engine) -> None:
    # Above workers.storage nothing sees psycopg2: a stored frame is a DuplicateRowError, and the COPY is void.
    raw = simple_book(100, luid=1)
    ingest_batch(clean_db, make_batch(batch_id="first", frames=[(T0, raw)]))
    book = parse_frame(raw, received_ns=T0)
    rows = to_rows([(book, book_metrics(book))], exchange="binance")
    with clean_db.begin() as conn:
        ensure_partitions(conn, [date(2026, 9, 21)])
        with pytest.raises(DuplicateRowError, match="duplicate key"), conn.begin_nested():
            copy_books(conn, rows)
    assert _count(clean_db, "SELECT count(*) FROM order_books") == 1


def test_bad_frames_are_recorded_with_reason_and_the_rest_is_stored(clean_db: Engine) -> None:
    good = [(T0 + i, simple_book(50, luid=i)) for i in range(3)]
    bad = [
        (T0 + 10, "not json at all"),
        (T0 + 11, diff_depth_frame()),
        (T0 + 12, frame(luid=1, bids=[("1.0", "-1")], asks=[])),
        (T0 + 13, frame(luid=1, bids=[("NaN", "1")], asks=[])),
        (T0 + 14, frame(luid=1, bids=[("2.0", "1"), ("2.0", "1")], asks=[])),
        (T0 + 15, '{"stream":"btcusdt@depth20","data":{"lastUpdateId":1,"bids":[],"asks":[],"x":1}}'),
        (T0 + 16, "nul\x00byte"),
    ]
    result = ingest_batch(clean_db, make_batch(batch_id="bad", frames=good + bad))
    assert (result.n_books, result.n_rejected) == (3, len(bad))
    with clean_db.connect() as conn:
        rows = conn.execute(text("SELECT reason, raw FROM rejected_messages ORDER BY received_at")).all()
    reasons = [r.reason for r in rows]
    assert reasons[0].startswith("not JSON")
    assert "unknown stream" in reasons[1]
    assert "plain decimal" in reasons[2] and "plain decimal" in reasons[3]
    assert "strictly descending" in reasons[4]
    assert "unexpected ['x']" in reasons[5]
    assert rows[1].raw == diff_depth_frame()
    assert rows[6].raw == "nul\ufffdbyte"


def test_one_sided_and_crossed_books_are_stored_raw_and_flagged(clean_db: Engine) -> None:
    one_sided = frame(luid=1, bids=[("10.0", "1.0")], asks=[])
    crossed = frame(luid=2, bids=[("10.5", "1.0")], asks=[("10.4", "1.0")])
    ingest_batch(clean_db, make_batch(batch_id="x", frames=[(T0, one_sided), (T0 + 1, crossed)]))
    with clean_db.connect() as conn:
        rows = conn.execute(
            text("SELECT last_update_id, spread, price, bid_vwap, crossed FROM book_metrics ORDER BY last_update_id")
        ).all()
    assert rows[0].spread is None and rows[0].price is None and rows[0].bid_vwap == 10.0 and not rows[0].crossed
    assert rows[1].spread == Decimal("-0.1") and rows[1].crossed


def test_partitions_are_created_per_utc_day(clean_db: Engine) -> None:
    day = 86_400 * 10**9
    frames = [(T0 + k * day, simple_book(10, luid=k)) for k in range(3)]
    ingest_batch(clean_db, make_batch(batch_id="days", frames=frames))
    with clean_db.connect() as conn:
        parts = conn.execute(
            text("SELECT count(DISTINCT tableoid) FROM book_snapshots WHERE received_at >= to_timestamp(:t)"),
            {"t": T0 // 10**9},
        ).scalar_one()
    assert parts == 3


def _bench_shaped_frames(n: int) -> list[str]:
    """Depth20 books shaped as bench/_common.py's (from ../shared/limits/gen.py): ticks of 0.01 and 0.1 and
    quantities with all 8 decimals significant, the least compressible real-shaped book."""
    rnd = random.Random(1)
    syms = [("btcusdt", 37000.0, 0.01), ("ethusdt", 2000.0, 0.01), ("bnbusdt", 300.0, 0.1)]
    out = []
    for i in range(n):
        sym, mid, tick = syms[i % 3]
        bids, asks, pb, pa = [], [], 0, 0
        for _ in range(20):
            pb += 1 + rnd.randint(0, 3)
            pa += 1 + rnd.randint(0, 3)
            bids.append((f"{mid - tick * pb:.8f}", f"{max(rnd.lognormvariate(-2, 1.5), 1e-8):.8f}"))
            asks.append((f"{mid + tick * pa:.8f}", f"{max(rnd.lognormvariate(-2, 1.5), 1e-8):.8f}"))
        out.append(frame(sym, luid=i, bids=bids, asks=asks))
    return out


def test_a_depth20_snapshot_takes_at_most_700_bytes(clean_db: Engine) -> None:
    # Every table, index and TOAST of the partition, over rows as the feed sends them (15,000 a second).
    frames = [(T0 + i * 66_000, f) for i, f in enumerate(_bench_shaped_frames(5000))]
    for k in range(0, len(frames), 500):
        ingest_batch(clean_db, make_batch(batch_id=f"size{k}", frames=frames[k : k + 500]))
    with clean_db.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM book_snapshots"))
        # Only the partitions holding these rows: other tests of the session leave partitions of other days behind,
        # each with its fixed overhead (index metapages, BRIN, free-space map).
        size, rows = conn.execute(
            text(
                "SELECT sum(pg_total_relation_size(p.oid)), sum((SELECT count(*) FROM book_snapshots b "
                "  WHERE b.tableoid = p.oid)) "
                "FROM (SELECT DISTINCT tableoid AS oid FROM book_snapshots WHERE symbol = ANY(:symbols)) p"
            ),
            {"symbols": ["BTCUSDT", "ETHUSDT", "BNBUSDT"]},
        ).one()
    per_row = int(size) / int(rows)
    assert per_row <= 700, per_row  # 1,459 with numeric[] levels and stored best bid, best ask and spread


@pytest.fixture(scope="module")
def partition(engine: Engine) -> date:
    day = date(2026, 9, 21)
    with engine.begin() as conn:
        ensure_partitions(conn, [day])
    return day


def _through_the_views(engine: Engine, books: list[BookSnapshot]) -> list[Row[Any]]:
    """COPY `books` as the worker does and read them back through order_books and book_metrics (rolled back).
    Their symbol is their own: other tests of the session leave rows behind."""
    books = [replace(b, symbol="ROUNDTRIP", received_ns=T0) for b in books]
    with engine.connect() as conn:
        copy_books(conn, to_rows([(b, book_metrics(b)) for b in books], exchange="binance"))
        rows = conn.execute(
            text(
                "SELECT o.bid_prices::text[] AS bp, o.bid_quantities::text[] AS bq, o.ask_prices::text[] AS ap, "
                "o.ask_quantities::text[] AS aq, m.best_bid::text, m.best_ask::text, m.spread::text, m.crossed "
                "FROM order_books o JOIN book_metrics m USING (exchange, symbol, received_at, last_update_id, depth) "
                "WHERE symbol = 'ROUNDTRIP' ORDER BY last_update_id"
            )
        ).all()
        conn.rollback()
    return list(rows)


def _text(v: Decimal | None) -> str | None:
    return None if v is None else format(v, "f")


def _assert_exact(book: BookSnapshot, row: Row[Any]) -> None:
    assert (row.bp, row.bq, row.ap, row.aq) == (
        list(book.bid_prices),
        list(book.bid_quantities),
        list(book.ask_prices),
        list(book.ask_quantities),
    )
    m = book_metrics(book)
    assert (row.best_bid, row.best_ask, row.spread, row.crossed) == (
        _text(m.best_bid),
        _text(m.best_ask),
        _text(m.spread),
        m.crossed,
    )


# Levels of any order and scales; quantities positive, as the metrics divide by their sum.
MIXED_SIDE = st.lists(st.tuples(PLAIN, PLAIN.filter(lambda v: v.strip("0.") != "")), max_size=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(uniform_books(zero_quantities=False), min_size=1, max_size=5), MIXED_SIDE, MIXED_SIDE)
def test_any_book_comes_back_exactly_through_the_views(
    engine: Engine,
    partition: date,
    uniform: list[tuple[int, tuple[list[str], list[str], list[str], list[str]]]],
    mixed_bids: list[tuple[str, str]],
    mixed_asks: list[tuple[str, str]],
) -> None:
    """Whatever decimals a book holds (one scale or several, trailing zeros, zeros, 40 digits, sides of any depth,
    an empty side), order_books returns each value as sent with its scale, and book_metrics the exact best prices
    and spread."""
    books = [
        make_book(bids=list(zip(bp, bq, strict=True)), asks=list(zip(ap, aq, strict=True)), last_update_id=i)
        for i, (_, (bp, bq, ap, aq)) in enumerate(uniform)
    ]
    books.append(make_book(bids=mixed_bids, asks=mixed_asks, last_update_id=len(books)))
    rows = _through_the_views(engine, books)
    assert len(rows) == len(books)
    for book, row in zip(books, rows, strict=True):
        _assert_exact(book, row)


@pytest.mark.parametrize(
    ("bid", "ask", "spread"),
    [
        ("40000.00000000", "40000.00000010", "0.00000010"),
        ("1.00000000000000000001", "1.00000000000000000002", "0.00000000000000000001"),
        ("0.07143000", "0.07144000", "0.00001000"),
        ("100.00000000", "100.00000000", "0.00000000"),
        ("100.00000000", "99.50000000", "-0.50000000"),
        ("1", "100000000000000000000", "99999999999999999999"),
        ("1.5", "2.25", "0.75"),  # scales differ: the spread has the larger one
    ],
)
def test_spread_is_exact_with_its_scale(engine: Engine, partition: date, bid: str, ask: str, spread: str) -> None:
    (row,) = _through_the_views(engine, [make_book(bids=[(bid, "1")], asks=[(ask, "1")])])
    assert (row.best_bid, row.best_ask, row.spread) == (bid, ask, spread)
    assert row.crossed is (Decimal(ask) <= Decimal(bid))


def _readme_queries() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## The SQL interface", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";") if q.strip()]


def test_every_readme_query_runs_and_reads_exact_books(clean_db: Engine) -> None:
    now_ns = time.time_ns()
    frames = [(now_ns - 1_000_000_000 + i * 1000, f) for i, f in enumerate(fixture_frames())]
    ingest_batch(clean_db, make_batch(batch_id="readme", frames=frames))
    queries = _readme_queries()
    assert len(queries) >= 7
    with clean_db.connect() as conn:
        results = [conn.execute(text(q)).all() for q in queries]
    latest = {r.symbol: r for r in results[0]}
    assert {"BTCUSDT", "ETHUSDT", "FLMUSDT"} <= latest.keys()
    assert (str(latest["FLMUSDT"].bid), str(latest["FLMUSDT"].ask)) == ("0.48560000", "0.48630000")
    # "the full book at one instant": the newest ETHUSDT book, level by level, values with their scale.
    newest = parse_frame([f for _, f in frames if '"ethusdt@' in f][-1], received_ns=0)
    n = len(newest.bid_prices)
    assert [str(r.bid_price) for r in results[3][:n]] == list(newest.bid_prices)
    assert [str(r.ask_qty) for r in results[3][:n]] == list(newest.ask_quantities)


@settings(max_examples=75, deadline=None)
@given(ANY_TEXT, ANY_TEXT)
def test_copy_reads_back_any_text_exactly(engine: Engine, exchange: str, symbol: str) -> None:
    """What to_rows writes, PostgreSQL's COPY reads back as written (after clean_text: NUL and lone surrogates)."""
    rows = to_rows([(b, book_metrics(b)) for b in [make_book(symbol=symbol)]], exchange=exchange)
    columns = ", ".join(c.name for c in book_snapshots.columns)
    with engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cur.execute("CREATE TEMP TABLE copy_probe (LIKE book_snapshots) ON COMMIT DROP")
        cur.copy_expert(f"COPY copy_probe ({columns}) FROM STDIN", io.StringIO(rows))
        cur.execute("SELECT exchange, symbol, depth, crossed FROM copy_probe")
        assert cur.fetchall() == [(clean_text(exchange), clean_text(symbol), 20, False)]
        conn.rollback()


def test_the_batch_fast_path_and_the_per_frame_path_store_the_same_rows(clean_db: Engine) -> None:
    """The same frames through models.columnar (the default) and one by one (the poison path): PostgreSQL holds
    the same books, metrics and flags for both, value for value (floats compared as stored float8)."""
    from tests.unit.models.test_columnar import _book, _frame

    rnd = random.Random(21)
    frames = fixture_frames() + [
        _frame(_book(rnd, scale=rnd.randint(1, 8), levels=rnd.randint(1, 20)), f"s{k % 5}usdt@depth20")
        for k in range(60)
    ]
    data = json.loads(frames[-1])["data"]
    frames.append(_frame({**data, "bids": data["asks"][:2][::-1], "asks": data["bids"][:2][::-1]}))  # crossed
    # A book the fast path leaves to the per-frame path (no point): that batch's COPY gets both paths' rows.
    frames.insert(3, _frame({"lastUpdateId": 7, "bids": [["100", "2"]], "asks": [["101", "3"]]}))
    mixed = parse_batch(make_batch(batch_id="probe", frames=[(T0, f) for f in frames]))
    assert len(mixed.books) == 1 and mixed.columns is not None and len(mixed.columns) == len(frames) - 1
    day = 86_400 * 10**9
    # One microsecond apart (what timestamptz keeps), so that ORDER BY received_at is one order.
    fast = ingest_batch(
        clean_db, make_batch(batch_id="fast", frames=[(T0 + i * 1000, f) for i, f in enumerate(frames)])
    )
    slow = ingest_batch(
        clean_db,
        make_batch(batch_id="slow", frames=[(T0 + day + i * 1000, f) for i, f in enumerate(frames)]),
        frame_by_frame=True,
    )
    assert fast.n_books == slow.n_books == len(frames)
    queries = (
        "SELECT symbol, last_update_id, bid_prices::text[], bid_quantities::text[], ask_prices::text[], "
        "ask_quantities::text[] FROM order_books WHERE received_at >= :lo AND received_at < :hi ORDER BY received_at",
        "SELECT symbol, last_update_id, depth, best_bid::text, best_ask::text, spread::text, bid_vwap, ask_vwap, "
        "price, crossed FROM book_metrics WHERE received_at >= :lo AND received_at < :hi ORDER BY received_at",
    )
    with clean_db.connect() as conn:
        for sql in queries:
            first, second = (
                [tuple(r) for r in conn.execute(text(sql), {"lo": _at(T0 + h * day), "hi": _at(T0 + (h + 1) * day)})]
                for h in (0, 1)
            )
            assert len(first) == len(frames)
            assert first == second
    assert any(r[-1] for r in first)  # the crossed book is there


def _at(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(ns // 10**9))
