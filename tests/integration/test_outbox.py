"""The outbox through real workers, Redis and PostgreSQL: a task message popped and dropped (what a worker node
SIGKILLed between kombu's BRPOP and its unacked note leaves) still ends stored, exactly once; the reaper re-enqueues
nothing else, through a backlog of retries and kombu's requeues at a worker's shutdown; kombu's requeue gives a batch
a new place in the sequence."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, text

from feed.broker import make_celery_sender
from feed.outage import PendingBatch
from models.messages import make_batch, transport_options
from tests.conftest import service_env
from tests.integration._frames import simple_book
from tests.services import start_worker, stop_process, wait_for
from workers.outbox import Outbox, OutboxKeys, install_restore_hook

pytestmark = pytest.mark.integration

N_FRAMES = 5
UNREACHABLE_DB = "postgresql://postgres@127.0.0.1:1/nowhere"


def _scalar(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def _batch(batch_id: str, first_luid: int) -> PendingBatch:
    now = time.time_ns()
    frames = [(now + i * 1000, simple_book(100 + i, luid=first_luid + i)) for i in range(N_FRAMES)]
    return PendingBatch(make_batch(batch_id=batch_id, frames=frames))


@pytest.fixture
def prefix(broker_prefix: str) -> str:
    return f"{broker_prefix}outbox-{uuid.uuid4().hex[:6]}:"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _reap_twice(box: Outbox) -> list[str]:
    """Two passes with no grace: the first marks suspects, the second re-enqueues those still lost."""
    first = box.reap(grace_s=0.0)
    return first.requeued + box.reap(grace_s=0.0).requeued


def test_a_message_lost_between_redis_and_a_worker_is_stored_anyway_exactly_once(
    clean_db: Engine, database_url: str, redis_url: str, prefix: str, client: redis.Redis, tmp_path: Path
) -> None:
    keys = OutboxKeys(prefix)
    send = make_celery_sender(redis_url, key_prefix=prefix)
    # No worker yet: pop two of three messages the way kombu does (BRPOP, the oldest first) and drop them, as a
    # worker node SIGKILLed before recording them as unacknowledged would: the first and the last of the queue.
    send(_batch("lost-first", 0))
    assert client.brpop([keys.queue], timeout=5) is not None
    send(_batch("delivered", 100))
    send(_batch("lost-last", 200))
    assert client.lpop(keys.queue) is not None  # the newest: nothing after it will ever raise the delivered mark
    assert client.llen(keys.queue) == 1 and client.hlen(keys.unacked) == 0
    worker = start_worker(service_env(database_url, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix), tmp_path / "w.log")
    box = Outbox(redis_url, key_prefix=prefix)
    try:
        wait_for(lambda: _scalar(clean_db, "SELECT count(*) FROM ingest_batches") == 1, 30, "the delivered batch")
        wait_for(lambda: client.llen(keys.queue) == 0 and client.hlen(keys.unacked) == 0, 10, "the queue empty")
        assert sorted(_reap_twice(box)) == ["lost-first", "lost-last"]
        wait_for(lambda: _scalar(clean_db, "SELECT count(*) FROM ingest_batches") == 3, 30, "the lost batches")
        wait_for(lambda: box.pending() == 0, 10, "the outbox emptied")
        assert _scalar(clean_db, "SELECT count(*) FROM order_books") == 3 * N_FRAMES
        assert _reap_twice(box) == []
        assert int(client.get(keys.reaped) or 0) == 2
        assert client.hlen(keys.payload) == 0 and client.hlen(keys.meta) == 0
    finally:
        stop_process(worker)


def test_the_reaper_duplicates_nothing_through_a_backlog_of_retries_and_requeues(
    clean_db: Engine, database_url: str, redis_url: str, prefix: str, client: redis.Redis, tmp_path: Path
) -> None:
    # PostgreSQL unreachable for the first worker: every batch is retried (each retry a new message, held by the
    # worker until due) while the reaper runs with no grace at all; one message is lost on the way. Then the worker
    # shuts down (kombu requeues what it held) and a worker that reaches PostgreSQL stores everything once.
    n_batches = 200
    keys = OutboxKeys(prefix)
    send = make_celery_sender(redis_url, key_prefix=prefix)
    for b in range(n_batches):
        send(_batch(f"backlog-{b}", b * 100))
    assert client.brpop([keys.queue], timeout=5) is not None  # backlog-0: lost
    env = service_env(UNREACHABLE_DB, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix)
    churn = start_worker(env, tmp_path / "churn.log", concurrency=1, name="churn")
    box = Outbox(redis_url, key_prefix=prefix)
    requeued: list[str] = []
    try:
        wait_for(lambda: int(client.get(keys.delivered) or 0) > n_batches + 50, 60, "retries under way")
        for _ in range(20):
            requeued += box.reap(grace_s=0.0).requeued
            time.sleep(0.1)
        assert requeued == ["backlog-0"]
        assert client.hlen(keys.unacked) > 0  # retries held by the worker until due
    finally:
        # A warm shutdown puts back every message the worker held (retries waiting for their ETA); on a loaded
        # machine it can take a while, and a SIGKILL would leave them to the visibility timeout instead.
        stop_process(churn, timeout=120)
    assert _reap_twice(box) == []  # what the worker held went back to the queue, each with a new place
    # Should the shutdown be killed anyway, what it held comes back after a short visibility timeout.
    env = service_env(database_url, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix, BOOKFEED_VISIBILITY_TIMEOUT_S="10")
    worker = start_worker(env, tmp_path / "w.log")
    try:
        wait_for(lambda: box.pending() == 0, 120, "the backlog stored")
        assert _reap_twice(box) == []
        assert _scalar(clean_db, "SELECT count(*) FROM ingest_batches") == n_batches
        assert _scalar(clean_db, "SELECT count(*) FROM order_books") == n_batches * N_FRAMES
        assert int(client.get(keys.reaped) or 0) == 1
    finally:
        stop_process(worker)


def test_a_message_kombu_requeues_gives_its_batch_a_new_place(redis_url: str, prefix: str, client: redis.Redis) -> None:
    install_restore_hook()
    keys = OutboxKeys(prefix)
    make_celery_sender(redis_url, key_prefix=prefix)(_batch("requeued", 0))
    (seq,) = [s for _, s in client.zrange(keys.seq, 0, -1, withscores=True)]
    client.hset(keys.suspects, "requeued", f"{int(seq)} 0")
    queue = Queue("ingest", Exchange("ingest", type="direct"), routing_key="ingest")
    got: list[object] = []
    with Connection(redis_url, transport_options={"visibility_timeout": 60, **transport_options(prefix)}) as conn:
        consumer = conn.Consumer(queue, callbacks=[lambda _b, m: got.append(m)], accept=["json"])
        consumer.consume()
        conn.drain_events(timeout=5)
        assert client.hlen(keys.unacked) == 1 and client.hexists(keys.unacked, f"requeued#{int(seq)}")
        got[0].reject(requeue=True)  # type: ignore[attr-defined]
        consumer.cancel()
    assert client.llen(keys.queue) == 1 and client.hlen(keys.unacked) == 0
    assert client.zscore(keys.seq, "requeued") == seq + 1
    assert not client.hexists(keys.suspects, "requeued")
