"""Tasks through a real Celery worker process and the real Redis broker (no eager mode)."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from feed.broker import broker_app, make_celery_sender
from feed.outage import PendingBatch
from models.messages import make_batch
from models.vocabulary import AVERAGES_TASK, MAINTENANCE_QUEUE, METRICS_QUEUE, RETENTION_TASK
from tests.conftest import service_env
from tests.integration._frames import simple_book
from tests.services import start_process, stop_process, wait_for
from workers.beat import check_averages
from workers.deliveries import delivery_key
from workers.ingest import ingest_batch
from workers.outbox import OutboxKeys

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
    # A committed batch leaves nothing in Redis: its deliveries counter goes with its payload.
    rd = redis.Redis.from_url(redis_url)
    counters = [delivery_key(b["batch_id"], key_prefix=broker_prefix) for b in batches]
    wait_for(lambda: rd.exists(*counters) == 0, 10, "the deliveries counters dropped")
    rd.close()


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


def test_the_averages_task_leaves_windows_whose_books_still_wait_in_the_queue(
    clean_db: Engine, redis_url: str, broker_prefix: str, worker: Path
) -> None:
    t = (int(time.time()) // 30 - 4) * 30  # four windows ago, aligned: t, t+30 and t+60 are closed
    stored = [((t + k) * NS, simple_book(100, luid=k)) for k in range(0, 90, 3)]
    ingest_batch(clean_db, make_batch(batch_id="stored", frames=stored))
    # A batch of t+61 still in the outbox (a backlog draining; nothing consumes this entry).
    rd = redis.Redis.from_url(redis_url)
    keys = OutboxKeys(broker_prefix)
    queued = {"v": 1, "exchange": "binance", "batch_id": "queued", "frames": [[(t + 61) * NS, "x"]]}
    rd.zadd(keys.seq, {"queued": 0})
    rd.hset(keys.payload, "queued", json.dumps(queued))
    app = broker_app(redis_url, key_prefix=broker_prefix, name="test")
    windows = "SELECT count(*) FROM price_averages WHERE window_seconds = 30"
    try:
        app.send_task(AVERAGES_TASK, kwargs={"window_s": 30}, queue=METRICS_QUEUE)
        wait_for(lambda: _count(clean_db, windows) == 2, 30, "the windows before the queued book")
        # Committed in the same transaction as those two: the window of the queued book was left for later.
        assert _count(clean_db, f"{windows} AND window_start = to_timestamp({t + 60})") == 0
    finally:
        rd.zrem(keys.seq, "queued")
        rd.hdel(keys.payload, "queued")
        rd.close()
    app.send_task(AVERAGES_TASK, kwargs={"window_s": 30}, queue=METRICS_QUEUE)
    wait_for(lambda: _count(clean_db, windows) == 3, 30, "the window once nothing waits")


def test_a_worker_started_without_queue_options_serves_every_queue(
    clean_db: Engine, database_url: str, redis_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    # `celery -A workers worker` as Celery's documentation starts it: no -Q. Averages must still be computed, and
    # beat's retention task reaches it (here without BOOKFEED_RETENTION_DAYS: it says so and drops nothing).
    prefix = f"{broker_prefix}plain:"
    log = tmp_path / "worker.log"
    name = f"plain-{uuid.uuid4().hex[:6]}@%h"
    args = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-c", "1", "-n", name]
    env = service_env(database_url, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix)
    proc = start_process([*args, "--without-gossip", "--without-mingle"], env, log, ready=b"ready.", what="worker")
    try:
        t = (int(time.time()) // 60 - 3) * 60
        frames = [((t + k) * NS, simple_book(100, luid=k)) for k in range(0, 60, 3)]
        make_celery_sender(redis_url, key_prefix=prefix)(PendingBatch(make_batch(batch_id="plain", frames=frames)))
        wait_for(lambda: _count(clean_db, "SELECT count(*) FROM order_books") == 20)
        app = broker_app(redis_url, key_prefix=prefix, name="test")
        app.send_task(AVERAGES_TASK, kwargs={"window_s": 60}, queue=METRICS_QUEUE)
        wait_for(lambda: _count(clean_db, "SELECT count(*) FROM price_averages") == 1, 30, "averages computed")
        app.send_task(RETENTION_TASK, queue=MAINTENANCE_QUEUE)
        wait_for(lambda: "BOOKFEED_RETENTION_DAYS is unset" in log.read_text(), 30, "the retention task taken")
    finally:
        stop_process(proc)


def _batch_row(engine: Engine, batch_id: str, stored_ago_s: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ingest_batches (batch_id, stored_at, n_books, n_rejected) "
                "VALUES (:b, now() - make_interval(secs => :ago), 1, 0)"
            ),
            {"b": batch_id, "ago": stored_ago_s},
        )


def test_beat_warns_while_books_arrive_and_no_averages_are_computed(
    clean_db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    _batch_row(clean_db, "old", 600)
    assert check_averages(clean_db, stale_s=60) is None  # nothing stored lately: nothing to average
    _batch_row(clean_db, "new", 0)
    with caplog.at_level(logging.WARNING, logger="workers.beat"):
        lag = check_averages(clean_db, stale_s=60)  # books arrive, no averages ever computed
    assert lag is not None and lag > 590
    assert "averages stale for 6" in caplog.text and "'metrics' queue" in caplog.text
    with clean_db.begin() as conn:  # a worker computes them again
        conn.execute(
            text(
                "INSERT INTO averages_progress (window_seconds, computed_to, last_run_at) "
                "VALUES (30, now() - interval '10 seconds', now())"
            )
        )
    assert check_averages(clean_db, stale_s=60) is None
    with clean_db.begin() as conn:  # ...and stop: stale again once the newest window is old enough
        conn.execute(text("UPDATE averages_progress SET computed_to = now() - interval '5 minutes'"))
    assert (check_averages(clean_db, stale_s=60) or 0) > 290
