"""Tasks through a real Celery worker process and the real Redis broker (no eager mode)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from feed.publisher import PendingBatch, broker_app, make_celery_sender
from models.messages import AVERAGES_TASK, METRICS_QUEUE, make_batch
from tests.integration._frames import simple_book
from tests.services import wait_for

pytestmark = pytest.mark.integration

NS = 10**9


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def test_batches_published_by_the_feed_are_stored_once(
    clean_db: Engine, redis_url: str, broker_prefix: str, worker: Path
) -> None:
    send = make_celery_sender(redis_url, key_prefix=broker_prefix)
    now = time.time_ns()
    batches = [
        make_batch(
            batch_id=f"w-{b}",
            frames=[(now + (b * 100 + i) * 1000, simple_book(100 + i, luid=b * 100 + i)) for i in range(100)]
            + [(now + b * 1000, "garbage")],
        )
        for b in range(5)
    ]
    for batch in batches:
        send(PendingBatch(batch))
    send(PendingBatch(batches[0]))  # a redelivery of a whole batch
    wait_for(lambda: _count(clean_db, "SELECT count(*) FROM ingest_batches") == 5)
    time.sleep(1.0)  # let the duplicate run too
    assert _count(clean_db, "SELECT count(*) FROM order_books") == 500
    assert _count(clean_db, "SELECT count(*) FROM rejected_messages") == 5
    assert "stored batch" in worker.read_text()


def test_averages_task_runs_in_the_worker(clean_db: Engine, redis_url: str, broker_prefix: str, worker: Path) -> None:
    send = make_celery_sender(redis_url, key_prefix=broker_prefix)
    t = (int(time.time()) // 60 - 3) * 60  # three minutes ago, aligned
    send(
        PendingBatch(
            make_batch(batch_id="avg", frames=[((t + k) * NS, simple_book(100, luid=k)) for k in range(0, 120, 3)])
        )
    )
    wait_for(lambda: _count(clean_db, "SELECT count(*) FROM order_books") == 40)
    app = broker_app(redis_url, key_prefix=broker_prefix, name="test")
    for w in (30, 60):
        app.send_task(AVERAGES_TASK, kwargs={"window_s": w}, queue=METRICS_QUEUE)
    wait_for(lambda: _count(clean_db, "SELECT count(*) FROM price_averages") == 4 + 2)
    assert _count(clean_db, "SELECT sum(samples) FROM price_averages WHERE window_seconds = 60") == 40
