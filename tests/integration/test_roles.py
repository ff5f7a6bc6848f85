"""Least-privilege roles: workers' role can store a batch and nothing more; readers see only the views."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from models.messages import make_batch
from tests.integration._frames import simple_book
from workers.averages import compute_averages
from workers.ingest import ingest_batch

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000_000_000


def _denied(conn: Connection, role: str, sql: str) -> None:
    conn.execute(text(f"SET ROLE {role}"))  # undone by the rollback below, so set for every statement
    with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"):
        conn.execute(text(sql))
    conn.rollback()


def test_writer_role_cannot_delete_or_create(clean_db: Engine) -> None:
    with clean_db.connect() as conn:
        _denied(conn, "bookfeed_writer", "DELETE FROM book_snapshots")
        _denied(conn, "bookfeed_writer", "UPDATE rejected_frames SET reason = ''")
        _denied(conn, "bookfeed_writer", "CREATE TABLE sneaky (x int)")
        _denied(conn, "bookfeed_writer", "DROP VIEW order_books")


def test_writer_role_runs_the_whole_ingest_path(clean_db: Engine) -> None:
    writer = create_engine(clean_db.url, poolclass=NullPool)

    @event.listens_for(writer, "connect")
    def _as_writer(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET ROLE bookfeed_writer")

    # A day without a partition yet: the SECURITY DEFINER function creates it for the writer. In the past, as
    # a batch held back by an outage would be: the function refuses days more than 2 days ahead.
    frames = [(T0 - 86_400 * 10**9 * 400 + i, simple_book(100 + i, luid=i)) for i in range(10)] + [(T0, "junk")]
    result = ingest_batch(writer, make_batch(batch_id="as-writer", frames=frames))
    assert (result.n_books, result.n_rejected) == (10, 1)
    assert ingest_batch(writer, make_batch(batch_id="as-writer", frames=frames)).duplicate
    # Beat's averages run in the same workers, as the same role: the first run, then one from its snapshot.
    now_s = T0 // 10**9
    first = compute_averages(writer, window_s=30, now_s=now_s, grace_s=5, lookback_s=600)
    assert first.n_windows >= 1
    ingest_batch(
        writer, make_batch(batch_id="late", frames=[(T0 - 10**9 * 400 * 86_400 + 99, simple_book(7, luid=99))])
    )
    assert compute_averages(writer, window_s=30, now_s=now_s + 30, grace_s=5, lookback_s=600).n_windows == 1
    writer.dispose()


def test_reader_role_sees_views_not_tables(clean_db: Engine) -> None:
    with clean_db.connect() as conn:
        conn.execute(text("SET ROLE bookfeed_reader"))
        for view in ("order_books", "book_metrics", "price_averages", "rejected_messages"):
            conn.execute(text(f"SELECT count(*) FROM {view}"))
        conn.rollback()
        _denied(conn, "bookfeed_reader", "SELECT count(*) FROM book_snapshots")
        _denied(
            conn, "bookfeed_reader", "INSERT INTO ingest_batches (batch_id, n_books, n_rejected) VALUES ('x', 0, 0)"
        )
        _denied(conn, "bookfeed_reader", "SELECT bookfeed_ensure_partition(DATE '2031-01-01')")


def test_migrate_creates_least_privilege_logins(
    database_url: str, clean_db: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy.engine import make_url

    from stack.cli import main

    suffix = uuid.uuid4().hex[:6]
    worker, reader = f"bf_worker_{suffix}", f"bf_reader_{suffix}"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("BOOKFEED_WORKER_DB_USER", worker)
    monkeypatch.setenv("BOOKFEED_WORKER_DB_PASSWORD", "s3cret'; DROP TABLE x; --")  # quoted by the server
    monkeypatch.setenv("BOOKFEED_READER_DB_USER", reader)
    monkeypatch.setenv("BOOKFEED_READER_DB_PASSWORD", "another")
    try:
        assert main(["migrate"]) == 0
        assert main(["migrate"]) == 0  # again: the logins are updated, not duplicated
        out = capsys.readouterr().out
        assert f"login {worker} is a member of bookfeed_writer" in out
        as_worker = create_engine(make_url(database_url).set(username=worker, password="x"), poolclass=NullPool)
        frames = [(T0 + i, simple_book(100 + i, luid=i)) for i in range(3)]
        assert ingest_batch(as_worker, make_batch(batch_id="login", frames=frames)).n_books == 3
        with as_worker.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(text("DELETE FROM book_snapshots"))
        as_worker.dispose()
        as_reader = create_engine(make_url(database_url).set(username=reader, password="x"), poolclass=NullPool)
        with as_reader.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM order_books")).scalar_one() == 3
            with pytest.raises(ProgrammingError, match="permission denied"):
                conn.execute(text("SELECT count(*) FROM book_snapshots"))
        as_reader.dispose()
    finally:
        with clean_db.begin() as conn:
            for role in (worker, reader):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))  # names made above
