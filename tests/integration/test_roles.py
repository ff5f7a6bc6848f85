"""Least-privilege roles: workers' role can store a batch and nothing more; readers see only the views."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from models.messages import make_batch
from tests.integration._frames import simple_book
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

    # A day without a partition yet: the SECURITY DEFINER function creates it for the writer.
    frames = [(T0 + 86_400 * 10**9 * 400 + i, simple_book(100 + i, luid=i)) for i in range(10)] + [(T0, "junk")]
    result = ingest_batch(writer, make_batch(batch_id="as-writer", frames=frames))
    assert (result.n_books, result.n_rejected) == (10, 1)
    assert ingest_batch(writer, make_batch(batch_id="as-writer", frames=frames)).duplicate
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
