"""A message Redis hands out while at its memory limit (noeviction) is kept, not lost (workers.brokerguard).

BRPOP is allowed under OOM (it frees memory), but kombu's write recording the message as unacknowledged is refused:
without the guard the message ends in neither the queue nor the unacked hash. Real private redis-server, kombu's
Redis transport with ack emulation as Celery uses it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from models.messages import transport_options
from stack.embedded import EmbeddedRedis
from tests.services import wait_for
from workers import brokerguard

pytestmark = pytest.mark.integration

PREFIX = "oomtest:"
QUEUE = Queue("ingest", Exchange("ingest", type="direct"), routing_key="ingest")


@pytest.fixture
def guard_sleeps() -> Iterator[threading.Event]:
    """The guard installed with a sleep that tells the test it is holding a message."""
    slept = threading.Event()

    def sleep(delay: float) -> None:
        slept.set()
        time.sleep(delay)

    brokerguard.uninstall()
    brokerguard.install(sleep=sleep)
    yield slept
    brokerguard.uninstall()
    brokerguard.install()


def test_a_message_delivered_while_redis_is_full_is_kept_until_acked(
    tmp_path: Path, guard_sleeps: threading.Event
) -> None:
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    client = redis.Redis.from_url(url)
    llen = lambda: client.llen(f"{PREFIX}ingest")  # noqa: E731
    unacked = lambda: client.hlen(f"{PREFIX}unacked")  # noqa: E731
    got: list[Any] = []
    errors: list[BaseException] = []
    try:
        with Connection(url, transport_options={"visibility_timeout": 60, **transport_options(PREFIX)}) as conn:
            conn.Producer().publish({"batch": 1}, exchange=QUEUE.exchange, routing_key="ingest", declare=[QUEUE])
            assert llen() == 1
            ch = conn.channel()
            ch.basic_qos(0, 1, False)
            consumer = conn.Consumer(QUEUE, channel=ch, callbacks=[lambda _b, m: got.append(m)], accept=["json"])
            consumer.consume()
            client.config_set("maxmemory", 1)  # a private Redis: ours to configure; every write is refused now

            def drain() -> None:
                try:
                    conn.drain_events(timeout=8)
                except BaseException as exc:  # reported to the test below
                    errors.append(exc)

            t = threading.Thread(target=drain, daemon=True)
            t.start()
            wait_for(lambda: llen() == 0, 5, "the message popped under OOM")
            wait_for(lambda: guard_sleeps.is_set() or not t.is_alive(), 5, "the guard holding the message")
            client.config_set("maxmemory", 0)
            t.join(8)
            assert not t.is_alive()
            # In neither the queue nor the unacked hash, it would be lost: recorded, a visibility timeout returns it.
            assert (llen(), unacked()) == (0, 1)
            assert errors == []
            assert [m.payload for m in got] == [{"batch": 1}]

            got[0].reject(requeue=True)
            assert (llen(), unacked()) == (1, 0)
            conn.drain_events(timeout=5)
            assert len(got) == 2
            assert (llen(), unacked()) == (0, 1)
            got[1].ack()
            assert (llen(), unacked()) == (0, 0)
            consumer.cancel()
    finally:
        client.close()
        rd.stop()


def test_errors_other_than_oom_are_not_held() -> None:
    assert brokerguard.is_oom(redis.exceptions.OutOfMemoryError("command not allowed"))
    assert not brokerguard.is_oom(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
    assert not brokerguard.is_oom(redis.exceptions.ConnectionError("Connection refused"))


def test_a_message_that_cannot_be_recorded_for_another_reason_goes_back_to_its_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu failing to record a popped message as unacknowledged (here: its connection released, as chaos drills
    saw after a Redis restart) must not lose it: the guard returns it to the queue before the error propagates."""
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    client = redis.Redis.from_url(url)
    brokerguard.uninstall()
    brokerguard.install(broker_url=lambda: url)
    try:
        with Connection(url, transport_options={"visibility_timeout": 60, **transport_options(PREFIX)}) as conn:
            conn.Producer().publish({"batch": 2}, exchange=QUEUE.exchange, routing_key="ingest", declare=[QUEUE])
            ch = conn.channel()
            ch.basic_qos(0, 1, False)
            consumer = conn.Consumer(QUEUE, channel=ch, callbacks=[lambda _b, _m: None], accept=["json"])
            consumer.consume()

            def released(*_args: Any, **_kwargs: Any) -> Any:
                raise AttributeError("'NoneType' object has no attribute 'hostname'")

            monkeypatch.setattr(type(ch.qos), "pipe_or_acquire", released)
            with pytest.raises(AttributeError):
                conn.drain_events(timeout=5)
            monkeypatch.undo()
            assert client.llen(f"{PREFIX}ingest") == 1, "the popped message is back on its queue"
            assert client.hlen(f"{PREFIX}unacked") == 0
            consumer.cancel()
    finally:
        brokerguard.uninstall()
        brokerguard.install()
        client.close()
        rd.stop()
