"""Draining counts every task the broker holds under the deployment's key prefix: both queues, kombu's unacked
hash (tasks a worker reserved and has not acknowledged) and the outbox (a batch whose message was lost)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from models.vocabulary import INGEST_QUEUE, METRICS_QUEUE
from stack.harness import UNACKED_KEY, drain, pending_tasks
from workers.outbox import OutboxKeys

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str, broker_prefix: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    prefix = broker_prefix + "drain:"
    yield c
    for key in c.scan_iter(prefix + "*"):
        c.delete(key)
    c.close()


@pytest.mark.parametrize("key", [METRICS_QUEUE, INGEST_QUEUE, UNACKED_KEY, "outbox"])
def test_a_task_anywhere_under_the_prefix_is_pending(client: redis.Redis, broker_prefix: str, key: str) -> None:
    prefix = broker_prefix + "drain:"
    # Another deployment's queue on the same Redis, under another prefix: not counted.
    client.lpush(prefix + "other:" + INGEST_QUEUE, "not ours")
    try:
        assert pending_tasks(client, prefix) == 0
        if key == UNACKED_KEY:
            client.hset(prefix + key, "tag", "task")
        elif key == "outbox":  # a batch whose message is in no queue: lost, until the reaper re-enqueues it
            key = OutboxKeys(prefix).seq.removeprefix(prefix)
            client.zadd(prefix + key, {"b-1": 1})
        else:
            client.lpush(prefix + key, "task")
        assert pending_tasks(client, prefix) == 1
        lines: list[str] = []
        assert not drain(client, prefix, timeout=0.5, interval=0.1, progress=lines.append)
        assert lines == ["draining: 1 task(s) queued or reserved"]
        client.delete(prefix + key)
        assert drain(client, prefix, timeout=5, interval=0.1)
    finally:
        client.delete(prefix + "other:" + INGEST_QUEUE)


def test_drain_also_waits_for_its_condition(client: redis.Redis, broker_prefix: str) -> None:
    assert not drain(client, broker_prefix + "drain:", timeout=0.5, interval=0.1, until=lambda: False)


def test_a_batch_in_the_outbox_counts_once_with_its_message(client: redis.Redis, broker_prefix: str) -> None:
    prefix = broker_prefix + "drain:"
    client.zadd(OutboxKeys(prefix).seq, {"b-1": 1, "b-2": 2})
    client.lpush(prefix + INGEST_QUEUE, "message of b-1")
    client.hset(prefix + UNACKED_KEY, "b-2#2", "message of b-2")
    assert pending_tasks(client, prefix) == 2
    client.delete(prefix + INGEST_QUEUE)
    assert pending_tasks(client, prefix) == 2  # b-1's message lost: its batch still waits
