"""feed.publisher: ordered hand-off to a fake `send`, retries with an injected sleep, bounded outage buffer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

from feed.publisher import PendingBatch, Publisher
from models.messages import EXCHANGE, PAYLOAD_VERSION

pytestmark = pytest.mark.unit


class FakeSender:
    """Records every attempt; raises ConnectionError for the first `failures` attempts."""

    def __init__(self, failures: int = 0, on_send: Callable[[PendingBatch], None] | None = None) -> None:
        self.failures = failures
        self.on_send = on_send
        self.attempts: list[str] = []
        self.delivered: list[PendingBatch] = []

    def __call__(self, pending: PendingBatch) -> None:
        self.attempts.append(pending.batch["batch_id"])
        if self.on_send is not None:
            self.on_send(pending)
        if len(self.attempts) <= self.failures:
            raise ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")
        self.delivered.append(pending)


def frames(start: int, n: int) -> list[tuple[int, str]]:
    return [(i, f"frame-{i}") for i in range(start, start + n)]


def make_publisher(
    send: Callable[[PendingBatch], None], *, max_buffered_frames: int = 1_000, sleeps: list[float] | None = None
) -> Publisher:
    sink = sleeps if sleeps is not None else []
    return Publisher(send, max_buffered_frames=max_buffered_frames, feed_id="feed", sleep=sink.append)


def drain(pub: Publisher) -> None:
    """Run the sender to completion in this thread: with stop already set, run() returns once the buffer is empty."""
    stop = threading.Event()
    stop.set()
    pub.run(stop)


def test_batches_are_sent_in_order_with_their_frames() -> None:
    send = FakeSender()
    pub = make_publisher(send)
    pub.enqueue(frames(0, 2))
    pub.enqueue(frames(2, 3))
    pub.enqueue(frames(5, 1))
    assert pub.pending_frames() == 6

    drain(pub)

    assert send.attempts == ["feed-1", "feed-2", "feed-3"]
    assert [f for p in send.delivered for f in p.batch["frames"]] == [[i, f"frame-{i}"] for i in range(6)]
    assert (pub.stats.published_batches, pub.stats.published_frames, pub.stats.buffered_frames) == (3, 6, 0)
    assert (pub.stats.dropped_frames, pub.stats.send_failures) == (0, 0)
    assert pub.pending_frames() == 0


def test_payload_follows_the_wire_contract() -> None:
    send = FakeSender()
    pub = make_publisher(send)
    pub.enqueue([(1_700_000_000_000_000_000, '{"stream":"btcusdt@depth20@100ms","data":{}}')])
    drain(pub)
    (pending,) = send.delivered
    assert pending.batch == {
        "v": PAYLOAD_VERSION,
        "exchange": EXCHANGE,
        "batch_id": "feed-1",
        "frames": [[1_700_000_000_000_000_000, '{"stream":"btcusdt@depth20@100ms","data":{}}']],
    }
    assert pending.n_frames == 1


def test_default_feed_id_makes_distinct_batch_ids() -> None:
    send = FakeSender()
    a = Publisher(send, max_buffered_frames=10, sleep=lambda _: None)
    b = Publisher(send, max_buffered_frames=10, sleep=lambda _: None)
    for pub in (a, b):
        pub.enqueue(frames(0, 1))
        drain(pub)
    first, second = send.attempts
    assert first != second
    assert first.endswith("-1") and second.endswith("-1")


def test_retry_keeps_the_batch_and_its_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="feed.publisher")
    send = FakeSender(failures=3)
    sleeps: list[float] = []
    pub = make_publisher(send, sleeps=sleeps)
    pub.enqueue(frames(0, 2))
    pub.enqueue(frames(2, 2))

    drain(pub)

    assert send.attempts == ["feed-1", "feed-1", "feed-1", "feed-1", "feed-2"]
    assert [p.batch["batch_id"] for p in send.delivered] == ["feed-1", "feed-2"]
    assert len(sleeps) == 3
    assert pub.stats.send_failures == 3
    assert (pub.stats.published_batches, pub.stats.published_frames, pub.stats.dropped_frames) == (2, 4, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("publishing failed (ConnectionError: Error 111")
    assert warnings[-1] == "publishing recovered after 3 failures"


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    stop = threading.Event()
    send = FakeSender(failures=12)
    send.on_send = lambda _: stop.set() if len(send.attempts) > send.failures else None  # stop once it recovers
    sleeps: list[float] = []
    pub = make_publisher(send, sleeps=sleeps)
    pub.enqueue(frames(0, 1))

    pub.run(stop)

    assert len(sleeps) == 12
    for failures, delay in enumerate(sleeps, start=1):
        base = min(10.0, 0.1 * 2 ** min(failures, 7))
        assert base / 2 <= delay <= base
    assert max(sleeps) <= 10.0
    assert send.attempts == ["feed-1"] * 13


def test_stop_during_outage_gives_up_after_five_attempts(caplog: pytest.LogCaptureFixture) -> None:
    send = FakeSender(failures=10**6)
    sleeps: list[float] = []
    pub = make_publisher(send, sleeps=sleeps)
    pub.enqueue(frames(0, 3))

    drain(pub)

    assert len(send.attempts) == 5
    assert len(sleeps) == 4
    assert pub.pending_frames() == 3
    assert pub.stats.published_frames == 0
    assert "stopping with 3 frames unpublished: broker unreachable" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    ]


def test_overflow_drops_oldest_batches_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    send = FakeSender()
    pub = make_publisher(send, max_buffered_frames=5)
    pub.enqueue(frames(0, 2))
    pub.enqueue(frames(2, 2))
    assert pub.stats.dropped_frames == 0
    pub.enqueue(frames(4, 2))  # 6 > 5: the oldest batch goes

    assert pub.stats.dropped_frames == 2
    assert pub.pending_frames() == pub.stats.buffered_frames == 4
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "dropped batch feed-1 of 2 frames, 2 dropped in all" in error.getMessage()

    pub.enqueue(frames(6, 5))  # 9 > 5: drops feed-2 (7), then feed-3 (5)
    assert pub.stats.dropped_frames == 6
    assert pub.pending_frames() == 5

    drain(pub)
    assert send.attempts == ["feed-4"]
    assert pub.stats.published_frames + pub.stats.dropped_frames == 11


def test_a_single_batch_larger_than_the_buffer_is_kept() -> None:
    send = FakeSender()
    pub = make_publisher(send, max_buffered_frames=5)
    pub.enqueue(frames(0, 8))
    assert (pub.pending_frames(), pub.stats.dropped_frames) == (8, 0)
    drain(pub)
    assert pub.stats.published_frames == 8


def test_run_returns_once_stop_is_set_and_buffer_empty() -> None:
    delivered = threading.Event()
    send = FakeSender(on_send=lambda _: delivered.set())
    pub = make_publisher(send)
    stop = threading.Event()
    sender = threading.Thread(target=pub.run, args=(stop,), daemon=True)
    sender.start()

    pub.enqueue(frames(0, 2))
    assert delivered.wait(5)
    assert sender.is_alive()  # an empty buffer alone does not end the loop
    stop.set()
    sender.join(5)

    assert not sender.is_alive()
    assert send.attempts == ["feed-1"]
    assert pub.pending_frames() == 0


def test_run_drains_the_buffer_before_returning() -> None:
    send = FakeSender(failures=2)
    pub = make_publisher(send)
    for i in range(4):
        pub.enqueue(frames(i * 10, 10))
    drain(pub)
    assert [p.batch["batch_id"] for p in send.delivered] == ["feed-1", "feed-2", "feed-3", "feed-4"]
    assert pub.pending_frames() == 0


def test_batch_delivered_while_buffer_overflows_is_not_counted_as_dropped() -> None:
    pub: Publisher

    def reader_enqueues_meanwhile(pending: PendingBatch) -> None:
        if pending.batch["batch_id"] == "feed-1":
            pub.enqueue(frames(2, 2))  # the websocket thread fills the buffer during the send

    send = FakeSender(on_send=reader_enqueues_meanwhile)
    pub = make_publisher(send, max_buffered_frames=2)
    pub.enqueue(frames(0, 2))

    drain(pub)

    assert [p.batch["batch_id"] for p in send.delivered] == ["feed-1", "feed-2"]
    assert pub.stats.published_frames + pub.stats.dropped_frames == 4  # every frame is either delivered or dropped
    assert pub.stats.dropped_frames == 0


def test_overflow_records_the_dropped_span_as_gaps_that_are_never_dropped() -> None:
    sent: list[dict[str, object]] = []
    pub = Publisher(lambda p: sent.append(dict(p.batch)), max_buffered_frames=2, feed_id="g", sleep=lambda s: None)
    a = '{"stream":"btcusdt@depth20","data":{"lastUpdateId":1}}'
    b = '{"stream":"ethusdt@depth20","data":{"lastUpdateId":1}}'
    pub.enqueue([(10, a), (20, b), (30, a)])  # over the limit, but the newest batch is kept
    pub.enqueue([(40, a), (50, a)])  # drops the first batch: gaps for both streams
    pub.enqueue([(60, a), (70, a)])  # drops the second; the gap batches stay
    assert pub.stats.dropped_frames == 5
    stop = threading.Event()
    stop.set()
    pub.run(stop)
    gaps = [tuple(g) for batch in sent for g in batch.get("gaps", [])]  # type: ignore[attr-defined]
    reason = "frames dropped: outage buffer full"
    assert sorted(gaps) == sorted(
        [("btcusdt@depth20", 10, 30, reason), ("ethusdt@depth20", 20, 20, reason), ("btcusdt@depth20", 40, 50, reason)]
    )
    assert [len(batch["frames"]) for batch in sent if batch["frames"]] == [2]  # type: ignore[arg-type]
