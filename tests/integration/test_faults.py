"""Faults against real servers: a PostgreSQL outage under a real worker, Redis going away under the feed, and a
poison batch that PostgreSQL refuses."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from feed.broker import make_celery_sender
from feed.outage import PendingBatch
from feed.publisher import Publisher
from models.messages import make_batch
from models.vocabulary import INGEST_QUEUE
from stack.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import service_env
from tests.integration._frames import simple_book
from tests.services import start_worker, stop_process, wait_for
from workers.ingest import ingest_batch
from workers.schema import upgrade_to_head

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000_000_000


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL of our own that the test may stop and start (never the shared one)."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    upgrade_to_head(url)
    yield pg, url
    pg.stop()


def test_worker_retries_through_a_postgres_outage(
    own_postgres: tuple[EmbeddedPostgres, str], redis_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    pg, db_url = own_postgres
    prefix = f"{broker_prefix}outage:"  # a queue of its own: the run's shared worker must not take this batch
    env = service_env(db_url, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix)
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1, name="outage")
    engine = create_engine(db_url)
    try:
        pg.pause()
        send = make_celery_sender(redis_url, key_prefix=prefix)
        now = time.time_ns()
        send(
            PendingBatch(
                make_batch(
                    batch_id="during-outage", frames=[(now + i * 1000, simple_book(100, luid=i)) for i in range(50)]
                )
            )
        )
        wait_for(lambda: "PostgreSQL unavailable" in (tmp_path / "worker.log").read_text(), 30)
        time.sleep(3)
        pg.resume()

        def stored() -> bool:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM order_books")).scalar_one() == 50

        wait_for(stored, 90)
    finally:
        engine.dispose()
        stop_process(worker)


def test_feed_buffers_while_redis_is_down_and_publishes_in_order(tmp_path: Path) -> None:
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    client = redis.Redis.from_url(url)
    try:
        publisher = Publisher(make_celery_sender(url), max_buffered_frames=10_000, feed_id="outage")
        stop = threading.Event()
        thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
        thread.start()
        publisher.enqueue([(1, "a")])
        wait_for(lambda: client.llen(INGEST_QUEUE) == 1, 10)
        rd.stop()
        for i in range(2, 12):  # the reader keeps going: enqueue never blocks
            t = time.monotonic()
            publisher.enqueue([(i, f"frame-{i}")])
            assert time.monotonic() - t < 0.05
        time.sleep(1.0)
        assert publisher.pending_frames() >= 9 and publisher.stats.send_failures >= 1
        rd.start()  # same port, AOF on: the first batch is still queued
        wait_for(lambda: publisher.pending_frames() == 0, 60)
        stop.set()
        thread.join(10)
        ids = [_batch_id(raw) for raw in client.lrange(INGEST_QUEUE, 0, -1)]
        # Redis LPUSHes, so the oldest is last; every batch arrived once, in order.
        assert list(reversed(ids)) == [f"outage-{n}" for n in range(1, 12)]
        assert publisher.stats.dropped_frames == 0
    finally:
        rd.stop()


def _batch_id(raw: bytes) -> str:
    import json

    body = json.loads(json.loads(raw)["body"])
    return str(body[0][0]["batch_id"])


def test_a_batch_postgres_refuses_is_stored_frame_by_frame(clean_db: Engine) -> None:
    # A DBA's constraint that refuses one symbol stands in for any book PostgreSQL will not take.
    with clean_db.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.symbol = 'POISONUSDT' THEN RAISE check_violation USING MESSAGE = 'poison refused'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(text("SELECT bookfeed_ensure_partition(DATE '2026-09-21')"))
        conn.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON book_snapshots_p20260921 "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        )
    try:
        frames = [(T0 + i, simple_book(100, luid=i)) for i in range(5)]
        frames.insert(2, (T0 + 99, simple_book(100, luid=1, symbol="poisonusdt")))
        result = ingest_batch(clean_db, make_batch(batch_id="poison", frames=frames))
        assert (result.n_books, result.n_rejected) == (5, 1)
        with clean_db.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM order_books")).scalar_one() == 5
            reason, raw = conn.execute(text("SELECT reason, raw FROM rejected_messages")).one()
        assert "poison refused" in reason and '"poisonusdt@depth20"' in raw
    finally:
        with clean_db.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_poison ON book_snapshots_p20260921"))
            conn.execute(text("DROP FUNCTION refuse_poison()"))
