"""The feed's publisher against a real Redis at its memory limit: it holds batches above the high-water mark and
publishes them all, in order, once Redis has room again (so workers always keep room to republish retries). And
run_feed's wiring against an in-test websocket server: its own rejections, unsubscribed streams, and the last-seen
times it leaves for the next feed process."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.sync.server import ServerConnection, serve

from feed.broker import make_celery_sender
from feed.outage import UNPUBLISHED_REASON, PendingBatch
from feed.publisher import Publisher
from feed.service import LAST_SEEN_KEY, read_feed_stats, run_feed
from feed.stream import OTHER_STREAMS
from models.settings import Settings
from models.vocabulary import INGEST_QUEUE
from stack.embedded import EmbeddedRedis
from tests.factories import make_frame
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


SUB, OTHER = "btcusdt@depth20", "xrpusdt@depth20"  # the feed subscribes to SUB only; the server sends both


def _book(stream: str, luid: int, *, levels: int = 2) -> str:
    bids = [(f"{100 - i * 0.01:.2f}", "1.00000000") for i in range(levels)]
    return make_frame(stream=stream, bids=bids, last_update_id=luid)


@contextmanager
def _server(messages: list[str]) -> Iterator[int]:
    """A websocket server on loopback that sends `messages` to whoever connects, then keeps the connection open
    (it serves any path, so also streams the URL does not name); yields its port."""

    def handler(ws: ServerConnection) -> None:
        for raw in messages:
            ws.send(raw)
        for _ in ws:
            pass

    with serve(handler, "127.0.0.1", 0) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield srv.socket.getsockname()[1]
        finally:
            srv.shutdown()
            thread.join(10)


def _feed(
    settings: Settings, send: Callable[[PendingBatch], None], stop: threading.Event
) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(run_feed(settings, stop=stop, send=send, install_signals=False))
    )
    thread.start()
    return thread, result


def _gaps(sent: list[PendingBatch], reason: str) -> list[tuple[Any, ...]]:
    return [tuple(g) for p in sent for g in p.batch.get("gaps", []) if g[3] == reason]


def test_feed_rejects_oversized_messages_forwards_unsubscribed_streams_without_state(
    redis_url: str, broker_prefix: str
) -> None:
    """run_feed wiring: a message over the size cap reaches the publisher as a `rejected` entry; frames of a stream
    the feed did not subscribe to are forwarded and counted under the shared counter, with no last-seen time; the
    last-seen time left for the next feed is the end of this one's "feed stopped" gap (not its last frame)."""
    prefix = f"{broker_prefix}feedpub-{uuid.uuid4().hex[:6]}:"
    big = _book(SUB, 2, levels=40)  # ~1,000 bytes, over the cap of 800
    forwarded = [_book(SUB, 1), _book(OTHER, 1), _book(SUB, 3), _book(OTHER, 2), _book(SUB, 4)]
    sent: list[PendingBatch] = []
    client = redis.Redis.from_url(redis_url)
    with _server([*forwarded[:2], big, *forwarded[2:]]) as port:
        settings = Settings(
            url=f"ws://127.0.0.1:{port}/stream?streams={SUB}", redis_url=redis_url, broker_key_prefix=prefix
        )
        # A cap below the settings' minimum (4096), so that a book can be over it: unvalidated on purpose.
        settings = settings.model_copy(update={"max_frame_bytes": 800})
        stop = threading.Event()
        feed, result = _feed(settings, sent.append, stop)
        try:

            def live() -> dict[str, Any]:
                stats = read_feed_stats(client, prefix)
                return stats[0] if stats else {}

            wait_for(lambda: live().get("frames") == 5 and live().get("feed_rejected") == 1, 20, "all 6 messages")
        finally:
            stop.set()
            feed.join(30)
    assert [excerpt for p in sent for _, _, excerpt in p.batch.get("rejected", [])] == [big[:1024]]
    assert result["feed_rejected"] == 1
    assert [raw for p in sent for _, raw in p.batch["frames"]] == forwarded
    assert result["per_stream"] == {SUB: 3, OTHER_STREAMS: 2}
    assert {g[0] for p in sent for g in p.batch.get("gaps", [])} == {SUB}
    [(_, _last_frame, stopped_at, _)] = _gaps(sent, "feed stopped")
    last_seen = client.hgetall(prefix + LAST_SEEN_KEY)
    assert last_seen == {SUB.encode(): str(stopped_at).encode()}  # the next feed's restart gap starts there
    client.close()


def test_frames_never_published_at_stop_become_gaps_and_are_not_claimed_as_seen(
    redis_url: str, broker_prefix: str
) -> None:
    """Redis refuses the frame batches until the feed gives up at stop: the frames are recorded as a gap, and the
    last-seen time left for the next feed is the earliest of them, not the stop time."""
    prefix = f"{broker_prefix}feedpub-{uuid.uuid4().hex[:6]}:"
    stop = threading.Event()
    sent: list[PendingBatch] = []
    refused: list[PendingBatch] = []

    def send(pending: PendingBatch) -> None:
        if pending.n_frames:
            refused.append(pending)
            stop.set()  # stop while the broker refuses
            raise ConnectionError("OOM command not allowed when used memory > 'maxmemory'")
        sent.append(pending)

    client = redis.Redis.from_url(redis_url)
    with _server([_book(SUB, i) for i in range(1, 4)]) as port:
        settings = Settings(
            url=f"ws://127.0.0.1:{port}/stream?streams={SUB}", redis_url=redis_url, broker_key_prefix=prefix
        )
        feed, result = _feed(settings, send, stop)
        feed.join(60)
    assert not feed.is_alive()
    times = sorted({ns for p in refused for ns, _ in p.batch["frames"]})
    assert len(times) == 3 and result["unpublished_frames"] == 3 and result["published_frames"] == 0
    [(_, start, end, _)] = _gaps(sent, UNPUBLISHED_REASON)
    assert (start, end) == (times[0], times[-1])
    assert _gaps(sent, "feed stopped")
    assert client.hgetall(prefix + LAST_SEEN_KEY) == {SUB.encode(): str(times[0]).encode()}
    client.close()
