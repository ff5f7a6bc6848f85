"""workers.db: the worker's engine has no pre-ping, so a pooled connection PostgreSQL closed (what a restart does)
must cost its batch one outage retry, never the batch, and the retry must find a fresh connection."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text

from models.errors import TransientStorageError
from models.messages import make_batch
from tests.integration._frames import simple_book
from workers.db import make_engine
from workers.deliveries import Limits, RetryLater, Tries, deliver
from workers.ingest import ingest_batch

pytestmark = pytest.mark.integration

LIMITS = Limits(max_retries=30, poison_retries=3, max_deliveries=5)


def _batch(batch_id: str, base_ns: int, n: int = 10) -> dict[str, object]:
    return make_batch(batch_id=batch_id, frames=[(base_ns + i * 1000, simple_book(100, luid=i)) for i in range(n)])


def _scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def test_a_connection_closed_by_the_server_costs_one_outage_retry_not_the_batch(
    clean_db: Engine, database_url: str
) -> None:
    worker = make_engine(database_url, pool_size=1)
    try:
        base = time.time_ns()
        ingest_batch(worker, _batch("before-restart", base))  # the pool now holds a live connection
        pid = _scalar(worker, "SELECT pg_backend_pid()")
        with clean_db.connect() as admin:  # what a PostgreSQL restart does to it; waits until the backend is gone
            assert admin.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar_one()
        tries, attempts = Tries(), 0
        while True:
            attempts += 1
            step = deliver(worker, _batch("after-restart", base + 10**6), deliveries=1, tries=tries, limits=LIMITS)
            if not isinstance(step, RetryLater):
                break
            assert isinstance(step.cause, TransientStorageError)  # an outage, never a poison batch
            assert attempts < 3
            tries = step.tries
        assert step["n_books"] == 10 and step["n_rejected"] == 0
        assert tries.poison == 0 and tries.outage <= 1
        assert _scalar(clean_db, "SELECT count(*) FROM order_books") == 20
        assert _scalar(clean_db, "SELECT count(*) FROM rejected_messages") == 0
        assert _scalar(worker, "SELECT pg_backend_pid()") != pid
    finally:
        worker.dispose()
