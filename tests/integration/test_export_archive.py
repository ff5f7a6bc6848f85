"""Data out: iter_books, `bookfeed export` (Parquet, CSV, Tardis layout), the cold archive and retention, against a
real PostgreSQL. Retention drops partitions, so this module works in a database of its own."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from api.books import Book, iter_books
from api.export import export_books, tardis_columns
from feed.broker import broker_app
from models.coldstore import ARCHIVE_TASK, ArchiveError, DayManifest, book_path, manifest_path
from models.messages import make_batch
from models.vocabulary import MAINTENANCE_QUEUE, METRICS_QUEUE, RETENTION_TASK
from stack.cli import main
from tests.conftest import empty_data_tables, service_env
from tests.integration._frames import fixture_frames, frame
from tests.services import start_worker, stop_process, wait_for
from workers.archive import archive_closed_days, rearchive_days
from workers.ingest import ingest_batch
from workers.retention import RetentionError, apply_retention, run_retention

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
OLD_DAY, OLDER_DAY = (NOW - timedelta(days=5)).date(), (NOW - timedelta(days=6)).date()
HOT_DAY = (NOW - timedelta(days=1)).date()
ALL = (datetime(2000, 1, 1, tzinfo=UTC), NOW + timedelta(days=3))


def _ns(day: date, second: int, micro: int = 0) -> int:
    t = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=second, microseconds=micro)
    return int(t.timestamp()) * 10**9 + t.microsecond * 1000


def _frames() -> list[tuple[int, str]]:
    """Real Binance books (8-decimal text) and hand-made ones with odd scales, over three days and two symbols;
    two books share a received_at (ordered by last_update_id)."""
    odd = [
        frame("btcusdt", luid=7, bids=[("0.00000002", "100"), ("0.00000001", "1.5")], asks=[("100.0", "0.10")]),
        frame("btcusdt", luid=8, bids=[("40069.98000000", "0.00002300")], asks=[]),
        frame("ethusdt", luid=9, bids=[("2548.07000000", "3.57932000")], asks=[("2548.08000000", "0.50000000")]),
    ]
    books = [f for f in fixture_frames() if '"btcusdt@' in f or '"ethusdt@' in f]
    out: list[tuple[int, str]] = []
    for k, day in enumerate((OLDER_DAY, OLD_DAY, HOT_DAY)):
        out += [(_ns(day, 3600 + i, 17), f) for i, f in enumerate(books)]
        out += [(_ns(day, 7200, 5), odd[0]), (_ns(day, 7200, 5), odd[1]), (_ns(day, 7300 + k), odd[2])]
    return out


@pytest.fixture
def books_db(own_db: Engine) -> Engine:
    empty_data_tables(own_db)
    frames = _frames()
    result = ingest_batch(own_db, make_batch(batch_id=f"export-{datetime.now(UTC).timestamp()}", frames=frames))
    assert (result.n_books, result.n_rejected) == (len(frames), 0)
    return own_db


def _view_rows(engine: Engine, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT exchange, symbol, received_at, last_update_id, bid_prices::text[], bid_quantities::text[],"
                    " ask_prices::text[], ask_quantities::text[] FROM order_books WHERE symbol = ANY(:s)"
                    " ORDER BY received_at, last_update_id, symbol"
                ),
                {"s": list(symbols)},
            )
        ]


def _as_rows(books: list[Book]) -> list[tuple[Any, ...]]:
    return [
        (
            "binance",
            b.symbol,
            b.received_at,
            b.last_update_id,
            [p for p, _ in b.bids],
            [q for _, q in b.bids],
            [p for p, _ in b.asks],
            [q for _, q in b.asks],
        )
        for b in books
    ]


def _merged_books(engine: Engine, archive_url: str | None = None) -> list[Book]:
    books = [
        b
        for s in ("BTCUSDT", "ETHUSDT")
        for b in iter_books(engine, symbol=s, start=ALL[0], end=ALL[1], archive_url=archive_url)
    ]
    return sorted(books, key=lambda b: (b.received_at, b.last_update_id, b.symbol))


def test_iter_books_returns_the_view_exactly_and_pages_without_loss(books_db: Engine) -> None:
    expected = _view_rows(books_db)
    assert _as_rows(_merged_books(books_db)) == expected
    assert any("0.00000001" in row[4] for row in expected)  # the scale survives, not 1E-8
    whole = list(iter_books(books_db, symbol="BTCUSDT", start=ALL[0], end=ALL[1]))
    pages: list[Book] = []
    after = None
    while True:
        page = list(iter_books(books_db, symbol="BTCUSDT", start=ALL[0], end=ALL[1], after=after, limit=3))
        if not page:
            break
        pages += page
        after = page[-1].key
    assert pages == whole


def test_parquet_export_equals_the_view(books_db: Engine, tmp_path: Path) -> None:
    out = tmp_path / "books.parquet"
    n = export_books(books_db, symbols=["BTCUSDT", "ETHUSDT"], start=ALL[0], end=ALL[1], fmt="parquet", out=out)
    table = pq.read_table(out)
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    rows = [tuple(r.values()) for r in table.to_pylist()]
    assert n == len(rows) and rows == _view_rows(books_db)


def test_csv_export_equals_the_view(books_db: Engine, tmp_path: Path) -> None:
    out = tmp_path / "books.csv"
    export_books(books_db, symbols=["BTCUSDT", "ETHUSDT"], start=ALL[0], end=ALL[1], fmt="csv", out=out)
    with out.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [
            (ex, sym, datetime.fromisoformat(t.replace("Z", "+00:00")), int(uid), *map(json.loads, arrays))
            for ex, sym, t, uid, *arrays in reader
        ]
    assert header == ["exchange", "symbol", "received_at", "last_update_id", "bid_prices", "bid_quantities",
                      "ask_prices", "ask_quantities"]  # fmt: skip
    assert rows == _view_rows(books_db)


# Tardis' book_snapshot_25 CSV columns (docs.tardis.dev, "Downloadable CSV files", data types), cut at 20 levels.
TARDIS_HEADER = "exchange,symbol,timestamp,local_timestamp," + ",".join(
    f"asks[{i}].price,asks[{i}].amount,bids[{i}].price,bids[{i}].amount" for i in range(20)
)


def test_tardis_csv_has_the_documented_columns_and_exact_values(books_db: Engine, tmp_path: Path) -> None:
    out = tmp_path / "tardis.csv.gz"
    export_books(books_db, symbols=["BTCUSDT"], start=ALL[0], end=ALL[1], fmt="csv", layout="tardis", out=out)
    lines = gzip.decompress(out.read_bytes()).decode().splitlines()
    assert lines[0] == TARDIS_HEADER == ",".join(tardis_columns())
    rows = list(csv.DictReader(lines))
    expected = _view_rows(books_db, ("BTCUSDT",))
    assert len(rows) == len(expected)
    for row, (ex, sym, t, _, bp, bq, ap, aq) in zip(rows, expected, strict=True):
        micros = int(t.timestamp()) * 1_000_000 + t.microsecond
        assert (row["exchange"], row["symbol"], int(row["timestamp"]), int(row["local_timestamp"])) == (
            ex, sym, micros, micros,
        )  # fmt: skip
        for i in range(20):
            assert (row[f"bids[{i}].price"], row[f"bids[{i}].amount"]) == ((bp[i], bq[i]) if i < len(bp) else ("", ""))
            assert (row[f"asks[{i}].price"], row[f"asks[{i}].amount"]) == ((ap[i], aq[i]) if i < len(ap) else ("", ""))


def _day_count(engine: Engine, day: date) -> int:
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM order_books WHERE received_at >= :a AND received_at < :b"),
                {"a": lo, "b": lo + timedelta(days=1)},
            ).scalar_one()
        )


def test_a_day_archived_verified_and_dropped_is_still_served(
    books_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    before_books, before_rows = _merged_books(books_db), _view_rows(books_db)
    result = archive_closed_days(books_db, str(archive), now=NOW)
    assert {OLDER_DAY, OLD_DAY, HOT_DAY} <= set(result.archived) and not result.failed
    manifest = DayManifest.from_json((archive / manifest_path(OLD_DAY)).read_text())
    assert manifest.total_rows == _day_count(books_db, OLD_DAY) > 0
    assert pq.read_metadata(archive / book_path(OLD_DAY, "BTCUSDT")).num_rows == manifest.rows["BTCUSDT"]
    # A second run writes nothing again.
    assert archive_closed_days(books_db, str(archive), now=NOW).archived == ()

    dropped = apply_retention(books_db, retention_days=3, archive_url=str(archive), now=NOW)
    assert set(dropped.dropped) == {OLDER_DAY, OLD_DAY} and not dropped.refused
    assert _day_count(books_db, OLD_DAY) == 0 and _day_count(books_db, HOT_DAY) > 0
    assert _as_rows(_merged_books(books_db)) != before_rows  # PostgreSQL alone lost the days...
    assert _merged_books(books_db, str(archive)) == before_books  # ...the archive serves them, in order

    monkeypatch.setenv("DATABASE_URL", books_db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("BOOKFEED_ARCHIVE_URL", str(archive))
    out = tmp_path / "all.parquet"
    args = ["export", "--symbols", "btcusdt,ETHUSDT", "--start", "2000-01-01", "--end", ALL[1].isoformat()]
    assert main([*args, "--format", "parquet", "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    assert [tuple(r.values()) for r in pq.read_table(out).to_pylist()] == before_rows

    # Idempotent: nothing older is left to drop.
    again = apply_retention(books_db, retention_days=3, archive_url=str(archive), now=NOW)
    assert again.dropped == () and again.refused == ()


def test_retention_refuses_days_the_archive_did_not_verify(books_db: Engine, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive_closed_days(books_db, str(archive), now=NOW)
    (archive / manifest_path(OLDER_DAY)).unlink()  # never verified
    # A book arriving after OLD_DAY was archived: the archive no longer holds the whole day.
    late = frame("btcusdt", luid=99, bids=[("1.00", "1.00")], asks=[("2.00", "1.00")])
    ingest_batch(books_db, make_batch(batch_id="late", frames=[(_ns(OLD_DAY, 80_000), late)]))
    before = _day_count(books_db, OLD_DAY)
    result = apply_retention(books_db, retention_days=3, archive_url=str(archive), now=NOW)
    assert set(result.refused) == {OLDER_DAY, OLD_DAY} and result.dropped == () and result.stale == (OLD_DAY,)
    assert _day_count(books_db, OLD_DAY) == before and _day_count(books_db, OLDER_DAY) > 0
    # The next run archives the unverified day and, asked to, the stale one again (now with its late book): both go.
    assert rearchive_days(books_db, str(archive), [OLD_DAY]).archived == (OLDER_DAY, OLD_DAY)
    assert apply_retention(books_db, retention_days=3, archive_url=str(archive), now=NOW).dropped == (
        OLDER_DAY,
        OLD_DAY,
    )
    late_books = list(iter_books(books_db, symbol="BTCUSDT", start=ALL[0], end=ALL[1], archive_url=str(archive)))
    assert any(b.last_update_id == 99 for b in late_books)


def test_one_archive_run_at_a_time(books_db: Engine, tmp_path: Path) -> None:
    with books_db.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(hashtext('bookfeed_archive'))"))
        assert archive_closed_days(books_db, str(tmp_path / "a"), now=NOW).archived == ()
        other.execute(text("SELECT pg_advisory_unlock(hashtext('bookfeed_archive'))"))
    assert OLD_DAY in archive_closed_days(books_db, str(tmp_path / "a"), now=NOW).archived


def test_retention_needs_the_owner_role(books_db: Engine, tmp_path: Path) -> None:
    writer = create_engine(books_db.url, poolclass=NullPool)

    @event.listens_for(writer, "connect")
    def _as_writer(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET ROLE bookfeed_writer")

    # The worker role archives (it may read order_books) but cannot drop a partition.
    assert OLD_DAY in archive_closed_days(writer, str(tmp_path / "a"), now=NOW).archived
    with pytest.raises(RetentionError, match="owner"):
        apply_retention(writer, retention_days=3, archive_url=str(tmp_path / "a"), now=NOW)
    writer.dispose()
    assert _day_count(books_db, OLD_DAY) > 0


def test_bookfeed_archive_archives_then_drops(
    books_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", books_db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("BOOKFEED_ARCHIVE_URL", str(tmp_path / "archive"))
    monkeypatch.setenv("BOOKFEED_RETENTION_DAYS", "3")
    assert main(["archive"]) == 0
    out = capsys.readouterr().out
    assert "days archived and verified" in out and "retention (3 days): 2 days dropped" in out
    assert _day_count(books_db, OLD_DAY) == 0 and _day_count(books_db, HOT_DAY) > 0
    assert main(["archive"]) == 0
    assert "retention (3 days): 0 days dropped, 0 ingest batch records deleted" in capsys.readouterr().out


def test_a_damaged_archive_is_a_typed_error(books_db: Engine, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive_closed_days(books_db, str(archive), now=NOW)
    apply_retention(books_db, retention_days=3, archive_url=str(archive), now=NOW)
    (archive / book_path(OLD_DAY, "BTCUSDT")).write_bytes(b"not parquet")
    with pytest.raises(ArchiveError, match="cannot read"):
        list(iter_books(books_db, symbol="BTCUSDT", start=ALL[0], end=ALL[1], archive_url=str(archive)))
    # An unreadable manifest too.
    (archive / manifest_path(OLD_DAY)).write_text("{")
    with pytest.raises(ArchiveError, match="unreadable manifest"):
        list(iter_books(books_db, symbol="BTCUSDT", start=ALL[0], end=ALL[1], archive_url=str(archive)))


def test_the_archive_task_runs_in_a_worker(
    books_db: Engine, redis_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    """The beat task through a real `celery worker` (BOOKFEED_ARCHIVE_URL in its environment), on a key prefix of
    its own."""
    prefix = f"{broker_prefix}archive:"
    archive = tmp_path / "archive"
    url = books_db.url.render_as_string(hide_password=False)
    env = service_env(url, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix, BOOKFEED_ARCHIVE_URL=str(archive))
    proc = start_worker(env, tmp_path / "worker.log", concurrency=1, name="archive")
    try:
        broker_app(redis_url, key_prefix=prefix, name="test").send_task(ARCHIVE_TASK, queue=METRICS_QUEUE)
        wait_for(lambda: (archive / manifest_path(OLD_DAY)).exists(), 60, "the archive task verified a day")
    finally:
        stop_process(proc)
    manifest = DayManifest.from_json((archive / manifest_path(OLD_DAY)).read_text())
    assert manifest.total_rows == _day_count(books_db, OLD_DAY)


def test_beats_retention_task_runs_in_a_worker_of_the_owner(
    books_db: Engine, redis_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    """The hourly retention task through a real `celery worker` on every queue (as `bookfeed up` starts it, the
    `maintenance` queue included), connected as the tables' owner with BOOKFEED_RETENTION_DAYS and the archive in its
    environment, on a key prefix of its own: the two old days, archived, are dropped; the recent one stays."""
    archive = tmp_path / "archive"
    archive_closed_days(books_db, str(archive), now=NOW)  # the hourly archive task's part (the test above)
    prefix = f"{broker_prefix}retention:"
    url = books_db.url.render_as_string(hide_password=False)
    env = service_env(
        url,
        redis_url,
        BOOKFEED_BROKER_KEY_PREFIX=prefix,
        BOOKFEED_ARCHIVE_URL=str(archive),
        BOOKFEED_RETENTION_DAYS="3",
    )
    log = tmp_path / "worker.log"
    hot = _day_count(books_db, HOT_DAY)
    proc = start_worker(env, log, concurrency=1, name="maintenance")
    try:
        broker_app(redis_url, key_prefix=prefix, name="test").send_task(RETENTION_TASK, queue=MAINTENANCE_QUEUE)
        wait_for(lambda: "days dropped" in log.read_text(), 60, "the retention task ran")
    finally:
        stop_process(proc)
    assert "retention (3 days): 2 days dropped, 0 kept" in log.read_text()
    counts = [_day_count(books_db, day) for day in (OLDER_DAY, OLD_DAY, HOT_DAY)]
    assert counts == [0, 0, hot]


def test_one_retention_run_at_a_time(books_db: Engine) -> None:
    with books_db.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(hashtext('bookfeed_retention'))"))
        assert run_retention(books_db, retention_days=3, archive_url=None, now=NOW).retention.dropped == ()
        other.execute(text("SELECT pg_advisory_unlock(hashtext('bookfeed_retention'))"))
    assert _day_count(books_db, OLD_DAY) > 0
    assert run_retention(books_db, retention_days=3, archive_url=None, now=NOW).retention.dropped == (
        OLDER_DAY,
        OLD_DAY,
    )


def test_a_book_arriving_after_its_day_was_dropped_joins_the_archive(books_db: Engine, tmp_path: Path) -> None:
    archive = str(tmp_path / "archive")
    archive_closed_days(books_db, archive, now=NOW)
    before = _merged_books(books_db)
    assert OLD_DAY in apply_retention(books_db, retention_days=3, archive_url=archive, now=NOW).dropped
    # A late book (a queue drained after an outage) makes the day's partition again, in this process too, which
    # stored the day's books before retention dropped it.
    late = frame("ethusdt", luid=77, bids=[("1.00", "1.00")], asks=[("2.00", "1.00")])
    ingest_batch(books_db, make_batch(batch_id="very-late", frames=[(_ns(OLD_DAY, 86_000), late)]))
    stale = apply_retention(books_db, retention_days=3, archive_url=archive, now=NOW)
    assert stale.stale == (OLD_DAY,) and _day_count(books_db, OLD_DAY) == 1
    # Archived again, the day keeps what was dropped and gains the late book; then it goes again.
    assert rearchive_days(books_db, archive, stale.stale).archived == (OLD_DAY,)
    manifest = DayManifest.from_json((tmp_path / "archive" / manifest_path(OLD_DAY)).read_text())
    assert (manifest.verified_postgres_rows, manifest.total_rows) == (
        1,
        sum(b.received_at.date() == OLD_DAY for b in before) + 1,
    )
    assert apply_retention(books_db, retention_days=3, archive_url=archive, now=NOW).dropped == (OLD_DAY,)
    after = _merged_books(books_db, archive)
    assert [b for b in after if b.last_update_id != 77] == before and any(b.last_update_id == 77 for b in after)
