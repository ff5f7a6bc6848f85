"""Delivery policy of ingest tasks through real workers, Redis and PostgreSQL: a retry that cannot be published keeps
its batch, deliveries are counted per batch (a batch that kills its worker ends frame by frame, then rejected), and
outage and poison retries have budgets of their own; a batch stored before never ends rejected too.

The tests hold the batch's claim row in ingest_batches in an open transaction, so the worker's attempt waits on that
lock for as long as the test needs: to kill the worker's process mid-batch, or to end its PostgreSQL session (what a
PostgreSQL restart does to a worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Connection, Engine, text

from feed.broker import make_celery_sender
from feed.outage import PendingBatch
from models.messages import make_batch
from stack.embedded import EmbeddedRedis
from tests.conftest import service_env
from tests.integration._frames import simple_book
from tests.services import start_worker, stop_process, wait_for
from workers.deliveries import DAY_S, DeliveryCounter, Limits, Mode, Tries, delivery_key, plan
from workers.ingest import ingest_batch

pytestmark = pytest.mark.integration

N_FRAMES = 20
LIMITS = Limits(max_retries=30, poison_retries=3, max_deliveries=5)


# --- the policy ---------------------------------------------------------------------------------------------------


def test_three_outage_retries_then_one_unexpected_error_is_retried_not_given_up() -> None:
    assert plan(deliveries=5, tries=Tries(outage=3, poison=1), limits=LIMITS) is Mode.NORMAL
    assert plan(deliveries=None, tries=Tries(outage=3, poison=1), limits=LIMITS) is Mode.NORMAL
    assert plan(deliveries=None, tries=Tries(outage=30, poison=3), limits=LIMITS) is Mode.NORMAL
    assert plan(deliveries=None, tries=Tries(outage=0, poison=4), limits=LIMITS) is Mode.FRAME_BY_FRAME
    assert plan(deliveries=None, tries=Tries(outage=0, poison=5), limits=LIMITS) is Mode.REJECT


def test_redeliveries_beyond_the_planned_retries_end_frame_by_frame_then_rejected() -> None:
    # Every retry the task published is one delivery more; only the others (a killed worker) count.
    modes = [plan(deliveries=d + 10, tries=Tries(outage=7, poison=3), limits=LIMITS) for d in range(1, 10)]
    assert modes == [Mode.NORMAL] * 5 + [Mode.FRAME_BY_FRAME] * 2 + [Mode.REJECT] * 2


def test_deliveries_are_counted_in_redis_and_expire(redis_url: str, broker_prefix: str) -> None:
    prefix = f"{broker_prefix}count:"
    counter = DeliveryCounter(redis_url, key_prefix=prefix)
    batch_id = f"b-{uuid.uuid4().hex}"
    assert [counter.count(batch_id) for _ in range(3)] == [1, 2, 3]
    client = redis.Redis.from_url(redis_url)
    key = delivery_key(batch_id, key_prefix=prefix)
    assert key == f"{prefix}bookfeed:deliveries:{batch_id}"
    assert 0 < client.ttl(key) <= DAY_S
    client.delete(key)
    assert counter.count(None) is None
    # Redis unreachable: unknown, not an error (the batch is handled as on a first delivery).
    assert DeliveryCounter("redis://127.0.0.1:1/0", timeout_s=0.5).count(batch_id) is None


# --- through a real worker -----------------------------------------------------------------------------------------


def _frames() -> list[tuple[int, str]]:
    now = time.time_ns()
    return [(now + i * 1000, simple_book(100 + i, luid=i)) for i in range(N_FRAMES)]


def _scalar(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def _waiting_backends(engine: Engine) -> list[int]:
    """Backends of this database waiting on a lock (the worker's claim of the held batch)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query LIKE '%ingest_batches%' ORDER BY backend_start"
            )
        )
        return [int(r[0]) for r in rows]


def _terminate(engine: Engine, pid: int) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


@pytest.fixture
def hold(clean_db: Engine) -> Iterator[tuple[str, Connection]]:
    """A batch id whose claim row is inserted, uncommitted, by the test: the worker's claim waits on it."""
    batch_id = f"held-{uuid.uuid4().hex[:8]}"
    conn = clean_db.connect()
    conn.begin()
    conn.execute(text("INSERT INTO ingest_batches (batch_id, n_books, n_rejected) VALUES (:b, 0, 0)"), {"b": batch_id})
    yield batch_id, conn
    conn.rollback()
    conn.close()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _kill_child_in_batch(engine: Engine, worker_pid: int, n_waiting: int) -> None:
    """Wait until delivery `n_waiting` waits on the held claim, then SIGKILL the worker's pool process. (A killed
    process's backend stays waiting on the lock until it is released: each delivery adds one.)"""
    wait_for(lambda: len(_waiting_backends(engine)) >= n_waiting, 30, f"delivery {n_waiting} waiting on the claim")
    (child,) = _children(worker_pid)  # concurrency 1
    os.kill(child, signal.SIGKILL)


def _worker(tmp_path: Path, database_url: str, redis_url: str, prefix: str, **extra: str) -> subprocess.Popen[bytes]:
    env = service_env(database_url, redis_url, BOOKFEED_BROKER_KEY_PREFIX=prefix, BOOKFEED_LOG_FORMAT="json", **extra)
    return start_worker(env, tmp_path / "worker.log", concurrency=1, name="delivery")


def _log(tmp_path: Path) -> list[dict[str, Any]]:
    """The worker's JSON log records (Celery's own start-up banner is not JSON)."""
    records = []
    for line in (tmp_path / "worker.log").read_text().split("\n")[:-1]:  # whole lines: the worker may be mid-write
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def _stored_record(tmp_path: Path) -> dict[str, Any]:
    """The worker's one "stored batch" record, waited for: it is logged after the commit the test saw."""
    wait_for(lambda: any(r.get("msg") == "stored batch" for r in _log(tmp_path)), 10, "the stored batch logged")
    (stored,) = [r for r in _log(tmp_path) if r.get("msg") == "stored batch"]
    return stored


def test_a_batch_that_killed_its_worker_is_counted_and_stored_frame_by_frame_once(
    clean_db: Engine,
    hold: tuple[str, Connection],
    database_url: str,
    redis_url: str,
    broker_prefix: str,
    tmp_path: Path,
) -> None:
    batch_id, lock = hold
    prefix = f"{broker_prefix}kill1-{uuid.uuid4().hex[:4]}:"
    worker = _worker(tmp_path, database_url, redis_url, prefix, BOOKFEED_INGEST_MAX_DELIVERIES="1")
    try:
        make_celery_sender(redis_url, key_prefix=prefix)(PendingBatch(make_batch(batch_id=batch_id, frames=_frames())))
        _kill_child_in_batch(clean_db, worker.pid, 1)
        wait_for(lambda: len(_waiting_backends(clean_db)) >= 2, 30, "redelivery")
        lock.rollback()  # the batch goes through now
        wait_for(lambda: _scalar(clean_db, "SELECT count(*) FROM order_books") == N_FRAMES, 30, "books stored")
        with redis.Redis.from_url(redis_url) as counter:  # the count (2) is in the stored record; the counter goes
            wait_for(lambda: not counter.exists(delivery_key(batch_id, key_prefix=prefix)), 10, "the counter dropped")
        assert _scalar(clean_db, "SELECT count(*) FROM ingest_batches WHERE batch_id = :b", b=batch_id) == 1
        assert _scalar(clean_db, "SELECT count(*) FROM rejected_messages") == 0
        stored = _stored_record(tmp_path)
        assert (stored["mode"], stored["deliveries"], stored["n_books"]) == ("frame by frame", 2, N_FRAMES)
    finally:
        stop_process(worker)


def test_a_batch_that_keeps_killing_its_worker_ends_recorded_as_rejected(
    clean_db: Engine,
    hold: tuple[str, Connection],
    database_url: str,
    redis_url: str,
    broker_prefix: str,
    tmp_path: Path,
) -> None:
    batch_id, lock = hold
    prefix = f"{broker_prefix}kill3-{uuid.uuid4().hex[:4]}:"
    worker = _worker(tmp_path, database_url, redis_url, prefix, BOOKFEED_INGEST_MAX_DELIVERIES="1")
    counter = redis.Redis.from_url(redis_url)
    try:
        key = delivery_key(batch_id, key_prefix=prefix)
        counter.set(key, 2)  # two deliveries killed their workers already (the test above shows one counted)
        make_celery_sender(redis_url, key_prefix=prefix)(PendingBatch(make_batch(batch_id=batch_id, frames=_frames())))
        _kill_child_in_batch(clean_db, worker.pid, 1)  # delivery 3, frame by frame: killed too
        lock.rollback()  # delivery 4 records the frames without parsing them
        wait_for(lambda: _scalar(clean_db, "SELECT count(*) FROM rejected_messages") == N_FRAMES, 30, "rejected")
        assert _scalar(clean_db, "SELECT count(*) FROM order_books") == 0
        wait_for(lambda: not counter.exists(key), 10, "the counter dropped with the recorded batch")  # counted: 4
        wait_for(lambda: any(r.get("mode") == "reject" for r in _log(tmp_path)), 10, "the reject logged")
        modes = [(r["mode"], r["deliveries"]) for r in _log(tmp_path) if r.get("logger") == "workers.deliveries"]
        assert modes == [("reject", 4)]
    finally:
        counter.close()
        stop_process(worker)


def test_a_stored_batch_redelivered_past_its_budget_is_not_also_rejected(
    clean_db: Engine, database_url: str, redis_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    # The batch was committed, then its worker died before acknowledging it, again and again: the delivery that
    # reaches the reject step finds the batch claimed and records nothing.
    batch_id = f"stored-{uuid.uuid4().hex[:8]}"
    payload = make_batch(batch_id=batch_id, frames=_frames())
    assert ingest_batch(clean_db, payload).n_books == N_FRAMES  # what the first delivery committed
    prefix = f"{broker_prefix}stored-{uuid.uuid4().hex[:4]}:"
    worker = _worker(tmp_path, database_url, redis_url, prefix, BOOKFEED_INGEST_MAX_DELIVERIES="1")
    try:
        with redis.Redis.from_url(redis_url) as client:
            client.set(delivery_key(batch_id, key_prefix=prefix), 3)
        make_celery_sender(redis_url, key_prefix=prefix)(PendingBatch(payload))
        wait_for(lambda: any(r.get("mode") == "reject" for r in _log(tmp_path)), 30, "the reject step")
        modes = [(r["mode"], r["deliveries"]) for r in _log(tmp_path) if r.get("logger") == "workers.deliveries"]
        assert modes == [("reject", 4)]
        assert _scalar(clean_db, "SELECT count(*) FROM rejected_messages") == 0
        assert _scalar(clean_db, "SELECT count(*) FROM order_books") == N_FRAMES
    finally:
        stop_process(worker)


def test_a_retry_that_cannot_be_published_keeps_its_batch(
    clean_db: Engine, hold: tuple[str, Connection], database_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    # Redis at its memory limit (noeviction) while PostgreSQL drops the worker's session: Celery cannot publish the
    # retry. The batch must stay in hand and end stored once, when memory is freed and PostgreSQL answers again.
    batch_id, lock = hold
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    client = redis.Redis.from_url(url)
    prefix = f"{broker_prefix}full:"
    worker = _worker(tmp_path, database_url, url, prefix)
    try:
        make_celery_sender(url, key_prefix=prefix)(PendingBatch(make_batch(batch_id=batch_id, frames=_frames())))
        wait_for(lambda: len(_waiting_backends(clean_db)) == 1, 30, "the worker waiting on the claim")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 1024 * 1024)  # a private Redis: ours to configure
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(1000):
                client.set(f"filler:{i}", b"x" * 65536)
        (pid,) = _waiting_backends(clean_db)
        _terminate(clean_db, pid)  # TransientStorageError in the worker: it tries to publish a retry
        wait_for(
            lambda: (
                "cannot publish the retry" in (tmp_path / "worker.log").read_text() or bool(_waiting_backends(clean_db))
            ),
            30,
            "the retry attempt",
        )
        client.delete(*[k for k in client.scan_iter("filler:*")])
        lock.rollback()
        wait_for(lambda: _scalar(clean_db, "SELECT count(*) FROM order_books") == N_FRAMES, 30, "books stored")
        assert _scalar(clean_db, "SELECT count(*) FROM ingest_batches WHERE batch_id = :b", b=batch_id) == 1
        assert _scalar(clean_db, "SELECT count(*) FROM rejected_messages") == 0
        wait_for(lambda: client.hlen(f"{prefix}unacked") == 0, 10, "the message acknowledged")
    finally:
        stop_process(worker)
        client.close()
        rd.stop()


def test_an_unexpected_error_after_three_outage_retries_is_retried_not_given_up(
    clean_db: Engine,
    hold: tuple[str, Connection],
    database_url: str,
    broker_prefix: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # Outage and poison retries share no counter: after 3 outage retries the first unexpected error (here a DBA's
    # trigger refusing the claim) is retried, and the batch is stored once the trigger is gone.
    batch_id, lock = hold
    prefix = f"{broker_prefix}budgets-{uuid.uuid4().hex[:4]}:"
    worker = _worker(tmp_path, database_url, redis_url, prefix)
    try:
        make_celery_sender(redis_url, key_prefix=prefix)(PendingBatch(make_batch(batch_id=batch_id, frames=_frames())))
        for _ in range(3):  # PostgreSQL drops the worker's session: an outage, three times
            wait_for(lambda: len(_waiting_backends(clean_db)) == 1, 30, "the worker waiting on the claim")
            _terminate(clean_db, _waiting_backends(clean_db)[0])
            wait_for(lambda: not _waiting_backends(clean_db), 10, "the session ended")
        wait_for(lambda: "retry 3" in (tmp_path / "worker.log").read_text(), 10, "the third outage retry")
        lock.rollback()
        with clean_db.begin() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_claim() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "RAISE check_violation USING MESSAGE = 'claim refused'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_claim BEFORE INSERT ON ingest_batches FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_claim()"
                )
            )
        try:
            wait_for(lambda: "claim refused" in (tmp_path / "worker.log").read_text(), 30, "the unexpected error")
        finally:
            with clean_db.begin() as conn:
                conn.execute(text("DROP TRIGGER refuse_claim ON ingest_batches"))
                conn.execute(text("DROP FUNCTION refuse_claim()"))
        wait_for(lambda: _scalar(clean_db, "SELECT count(*) FROM order_books") == N_FRAMES, 30, "books stored")
        assert _scalar(clean_db, "SELECT count(*) FROM rejected_messages") == 0
        stored = _stored_record(tmp_path)
        assert stored["mode"] == "normal"  # the first unexpected error does not even lead to frame by frame
    finally:
        stop_process(worker)
