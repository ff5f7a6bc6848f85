"""The feed's publisher against a real Redis at its memory limit: it holds batches above the high-water mark and
publishes them all, in order, once Redis has room again (so workers always keep room to republish retries)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from feed.publisher import PendingBatch, Publisher, make_celery_sender
from feed.service import LAST_SEEN_KEY, read_feed_stats, run_feed
from models.settings import Settings
from models.vocabulary import INGEST_QUEUE
from simulator import SimConfig, SimulatorThread
from stack.embedded import EmbeddedRedis
from tests.services import wait_for

pytestmark = pytest.mark.integration

PREFIX = "hw:"  # the sender's key prefix: the check must ask the same Redis the tasks go to


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of our own with a 4 MB limit, nothing evicted (never the shared one)."""
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    client = redis.Redis.from_url(url)
    client.config_set("maxmemory", "4mb")
    client.config_set("maxmemory-policy", "noeviction")
    client.close()
    yield url
    rd.stop()


def test_feed_holds_batches_above_high_water_and_publishes_them_in_order_below(small_redis: str) -> None:
    client = redis.Redis.from_url(small_redis)
    maxmemory = int(client.info("memory")["maxmemory"])
    # Fill to ~88% of maxmemory in small steps (a big command's query buffer counts too): above the 80% mark,
    # still below the limit, so a publish would succeed.
    while int(client.info("memory")["used_memory"]) < 0.88 * maxmemory:
        client.append("filler", b"x" * 32_768)

    sender = make_celery_sender(small_redis, key_prefix=PREFIX)
    checks: list[tuple[int, int]] = []

    def memory() -> tuple[int, int]:
        checks.append(sender.memory())
        return checks[-1]

    publisher = Publisher(sender, max_buffered_frames=10_000, feed_id="hw", broker_memory=memory, high_water=0.8)
    stop = threading.Event()
    thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for i in range(5):
            publisher.enqueue([(i * 10 + j, f"frame-{i}-{j}") for j in range(3)])
        wait_for(lambda: len(checks) >= 3, 10, "three high-water checks")  # about two seconds of holding
        assert publisher.stats.paused_high_water
        assert client.llen(PREFIX + INGEST_QUEUE) == 0 and publisher.stats.published_batches == 0
        assert publisher.pending_frames() == 15

        client.delete("filler")
        wait_for(lambda: publisher.pending_frames() == 0, 10, "buffer published")
        assert not publisher.stats.paused_high_water and publisher.stats.high_water_pauses == 1
    finally:
        stop.set()
        thread.join(10)
    # Redis LPUSHes, so the oldest is last: every batch once, in order.
    ids = [json.loads(json.loads(raw)["body"])[0][0]["batch_id"] for raw in client.lrange(PREFIX + INGEST_QUEUE, 0, -1)]
    assert list(reversed(ids)) == [f"hw-{n}" for n in range(1, 6)]
    client.close()


def test_feed_sends_its_own_rejections_and_keeps_only_subscribed_state(redis_url: str, broker_prefix: str) -> None:
    """run_feed wiring: messages over the size cap reach the publisher as `rejected` entries and are counted in the
    stats; last_seen in Redis holds the subscribed streams that delivered frames."""
    prefix = f"{broker_prefix}feedpub-{uuid.uuid4().hex[:6]}:"
    small, big = "ethusdt@depth5@100ms", "btcusdt@depth20@100ms"  # ~400 and ~1,400 bytes a message
    sent: list[PendingBatch] = []
    client = redis.Redis.from_url(redis_url)
    with SimulatorThread(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), rate=40)) as sim:
        settings = Settings(url=sim.url([big, small]), redis_url=redis_url, broker_key_prefix=prefix)
        # A cap below the settings' minimum (4096), so that every depth20 book is over it: unvalidated on purpose.
        settings = settings.model_copy(update={"max_frame_bytes": 800})
        stop = threading.Event()
        result: dict[str, Any] = {}
        feed = threading.Thread(
            target=lambda: result.update(run_feed(settings, stop=stop, send=sent.append, install_signals=False))
        )
        feed.start()
        try:

            def live_rejected() -> int:
                stats = read_feed_stats(client, prefix)
                return int(stats[0].get("feed_rejected", 0)) if stats else 0

            wait_for(lambda: live_rejected() >= 5, 20, "rejections in the live stats")
        finally:
            stop.set()
            feed.join(30)
    rejected = [r for p in sent for r in p.batch.get("rejected", [])]
    assert rejected and all(p.batch["frames"] == [] for p in sent if p.batch.get("rejected"))
    assert all(
        isinstance(ns, int) and reason and excerpt.startswith(f'{{"stream":"{big}"') for ns, reason, excerpt in rejected
    )
    assert result["feed_rejected"] == len(rejected)
    frames = [raw for p in sent for _, raw in p.batch["frames"]]
    assert frames and all(raw.startswith(f'{{"stream":"{small}"') for raw in frames)
    last_seen = client.hgetall(prefix + LAST_SEEN_KEY)
    assert set(last_seen) == {small.encode()}
    client.close()
