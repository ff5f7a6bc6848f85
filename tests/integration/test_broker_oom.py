"""A task message Redis hands out while at its memory limit (noeviction) is not lost.

BRPOP is allowed under OOM (it frees memory), but kombu's write recording the message as unacknowledged is refused:
the message ends in neither the queue nor the unacked hash. Its batch is still in the outbox, and the reaper enqueues
it again once Redis has room. Real private redis-server, a real worker, PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from feed.broker import make_celery_sender
from feed.outage import PendingBatch
from models.messages import make_batch
from stack.embedded import EmbeddedRedis
from tests.conftest import service_env
from tests.integration._frames import simple_book
from tests.services import start_worker, stop_process, wait_for
from workers.outbox import Outbox, OutboxKeys

pytestmark = pytest.mark.integration

N_FRAMES = 20


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _batch(batch_id: str, first_luid: int) -> PendingBatch:
    now = time.time_ns()
    frames = [(now + i * 1000, simple_book(100 + i, luid=first_luid + i)) for i in range(N_FRAMES)]
    return PendingBatch(make_batch(batch_id=batch_id, frames=frames))


def test_a_message_delivered_while_redis_is_full_ends_stored_once(
    clean_db: Engine, database_url: str, tmp_path: Path
) -> None:
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    client = redis.Redis.from_url(url)
    prefix = f"oom-{uuid.uuid4().hex[:6]}:"
    keys = OutboxKeys(prefix)
    log = tmp_path / "w.log"
    worker = start_worker(service_env(database_url, url, BOOKFEED_BROKER_KEY_PREFIX=prefix), log, concurrency=1)
    try:
        # The idle worker waits in BRPOP. Frozen, it takes the message (Redis answers its BRPOP at once) but reads
        # it only once Redis is at its limit (a private Redis: ours to configure); then kombu's note is refused.
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            make_celery_sender(url, key_prefix=prefix)(_batch("popped-while-full", 0))
            client.config_set("maxmemory", 1)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        wait_for(lambda: client.llen(keys.queue) == 0, 30, "the message popped under OOM")
        wait_for(lambda: "OutOfMemoryError" in log.read_text(), 30, "kombu's note refused")
        assert client.hlen(keys.unacked) == 0, "in neither the queue nor the unacked hash"
        client.config_set("maxmemory", 0)
        box = Outbox(url, key_prefix=prefix)
        box.reap(grace_s=0.0)
        assert box.reap(grace_s=0.0).requeued == ["popped-while-full"]
        wait_for(lambda: box.pending() == 0, 60, "the batch stored")
        assert _count(clean_db, "SELECT count(*) FROM ingest_batches") == 1
        assert _count(clean_db, "SELECT count(*) FROM order_books") == N_FRAMES
        assert _count(clean_db, "SELECT count(*) FROM rejected_messages") == 0
    finally:
        stop_process(worker)
        client.close()
        rd.stop()
