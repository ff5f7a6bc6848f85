"""stack.status and workers.metrics.queue_state against real PostgreSQL and Redis (no feed running, and a worker
only where a test starts one): unreachable services make the status down, a worker on the maintenance queue alone
is not counted alive, the queues and the oldest waiting batch are read from the outbox, and
the report's symbols, gaps and thresholds come from the views and the feeds' stats."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine

from feed.broker import broker_app
from feed.service import STATS_PREFIX
from models.settings import Settings
from models.vocabulary import MAINTENANCE_QUEUE
from stack.status import DEGRADED, DOWN, check_status, ping_workers
from tests.conftest import BROKER_PREFIX, service_env
from tests.services import start_process, stop_process
from workers.metrics import queue_state
from workers.outbox import OutboxKeys

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    p = f"{BROKER_PREFIX}status-{uuid.uuid4().hex[:6]}:"
    yield p
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(p + "*"):
        client.delete(key)
    client.close()


def test_unreachable_services_are_down() -> None:
    s = Settings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://postgres@127.0.0.1:1/none")
    engine = create_engine(s.require_database_url(), connect_args={"connect_timeout": 2})
    broker = redis.Redis.from_url(s.require_redis_url(), socket_connect_timeout=2)
    status = check_status(s, engine=engine, broker=broker, ping=lambda: 1)
    engine.dispose()
    assert status.code == DOWN
    assert any(p.startswith("Redis does not answer") for p in status.problems)
    assert any(p.startswith("PostgreSQL does not answer") for p in status.problems)


def test_queue_state_reads_depths_and_the_oldest_waiting_batch(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = OutboxKeys(prefix)
    assert queue_state(client, prefix).oldest_received_ns is None
    old_ns = time.time_ns() - 90 * 10**9
    client.zadd(keys.seq, {"gaps-only": 1, "b1": 2, "b2": 3})
    client.hset(keys.payload, "gaps-only", json.dumps({"v": 1, "exchange": "binance", "batch_id": "g", "frames": []}))
    for batch_id, ns in (("b1", old_ns + 10**9), ("b2", old_ns)):
        batch = {"v": 1, "exchange": "binance", "batch_id": batch_id, "frames": [[ns, "x" * 5000], [ns + 1, "y"]]}
        client.hset(keys.payload, batch_id, json.dumps(batch))
    client.lpush(keys.queue, "m1", "m2")
    state = queue_state(client, prefix)
    client.close()
    assert state.depth["ingest"] == 2 and state.outbox == 3
    assert state.oldest_received_ns == old_ns
    assert 89 < state.oldest_age_s() < 600


def test_the_oldest_waiting_frame_is_found_behind_a_feeds_first_gap_only_batches(redis_url: str, prefix: str) -> None:
    # A feed (re)started with many streams opens with several batches that carry only its "feed started" gaps.
    client = redis.Redis.from_url(redis_url)
    keys = OutboxKeys(prefix)
    ns = time.time_ns() - 60 * 10**9
    for i in range(12):
        client.zadd(keys.seq, {f"g{i}": i})
        client.hset(
            keys.payload, f"g{i}", json.dumps({"v": 1, "exchange": "binance", "batch_id": f"g{i}", "frames": []})
        )
    client.zadd(keys.seq, {"b": 12})
    client.hset(keys.payload, "b", json.dumps({"v": 1, "exchange": "binance", "batch_id": "b", "frames": [[ns, "x"]]}))
    state = queue_state(client, prefix)
    client.close()
    assert state.outbox == 13 and state.oldest_received_ns == ns


def test_a_worker_on_the_maintenance_queue_alone_is_not_counted_alive(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """docker-compose's retention worker stores nothing: while it is the only node, no worker stores books, and
    `bookfeed status` must say so (down) instead of counting it."""
    s = Settings(redis_url=redis_url, database_url=database_url, broker_key_prefix=prefix)
    args = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", MAINTENANCE_QUEUE, "-c", "1"]
    args += ["-n", f"maintenance-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"]
    env = service_env(database_url, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix)
    proc = start_process(args, env, tmp_path / "worker.log", ready=b"ready.", what="worker")
    try:
        app = broker_app(redis_url, key_prefix=prefix, name="test")
        assert len(app.control.ping(timeout=2.0) or []) == 1  # it is there, and answers
        app.close()
        assert ping_workers(s, timeout_s=2.0) == 0
    finally:
        stop_process(proc)


def test_status_reports_feeds_symbols_and_no_worker(
    clean_db: Engine, database_url: str, redis_url: str, prefix: str
) -> None:
    s = Settings(redis_url=redis_url, database_url=database_url, broker_key_prefix=prefix, status_queue_age_s=30)
    client = redis.Redis.from_url(redis_url)
    stats = {"feed_id": "f1", "ts": time.time(), "connected": False, "per_stream": {"solusdt@depth5@100ms": 3}}
    client.set(prefix + STATS_PREFIX + "f1", json.dumps(stats), ex=15)
    keys = OutboxKeys(prefix)
    client.zadd(keys.seq, {"b1": 1})
    batch = {"v": 1, "exchange": "binance", "batch_id": "b1", "frames": [[time.time_ns() - 60 * 10**9, "x"]]}
    client.hset(keys.payload, "b1", json.dumps(batch))
    status = check_status(s, engine=clean_db, broker=client, ping=lambda: 0)
    client.close()
    assert status.code == DOWN
    assert status.feeds == 1 and status.workers_alive == 0
    problems = "\n".join(status.problems)
    assert "no Celery worker of the ingest queue answers a ping" in problems
    assert "feed f1 has no live connection" in problems
    assert "the oldest waiting batch is 60 s old" in problems
    assert "SOLUSDT (nothing stored)" in problems
    (sol,) = status.symbols
    assert sol.symbol == "SOLUSDT" and sol.stale and sol.last_book_age_s is None
    assert sol.stale_after_s == 10.0  # 10 x 100 ms, below the 10 s floor
    assert status.code > DEGRADED


def test_live_view_shows_the_status_warning_in_one_redrawn_frame(clean_db: Engine, redis_url: str, prefix: str) -> None:
    from stack.live import LiveView

    s = Settings(redis_url=redis_url, database_url=clean_db.url.render_as_string(False), broker_key_prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    frames: list[list[str]] = []
    printed: list[str] = []
    view = LiveView(
        clean_db,
        client,
        prefix,
        printed.append,
        status=lambda: check_status(s, engine=clean_db, broker=client, ping=lambda: 0),
        redraw=lambda lines: frames.append(list(lines)),
    )
    view.tick()
    view.tick()
    client.close()
    assert printed == [] and len(frames) == 2
    warning = [line for line in frames[0] if "WARNING" in line]
    assert warning and warning[0].strip().startswith("WARNING status down: ")
    assert "no Celery worker of the ingest queue answers a ping" in warning[0]
