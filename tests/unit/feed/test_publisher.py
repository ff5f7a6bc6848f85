"""feed.publisher: ordered hand-off to a fake `send`, retries with backoffs that `stop` cuts short, holding above
the high-water mark, and giving up at stop."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from feed.publisher import Publisher
from models.messages import PAYLOAD_VERSION
from models.vocabulary import EXCHANGE
from tests.services import wait_for
from tests.unit.feed._fakes import (
    FakeBroker,
    FakeSender,
    RecordingStop,
    book,
    drain,
    frames,
    gaps_sent,
    make_publisher,
)

pytestmark = pytest.mark.unit


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
    pub = make_publisher(send)
    pub.enqueue(frames(0, 2))
    pub.enqueue(frames(2, 2))

    stop = drain(pub)

    assert send.attempts == ["feed-1", "feed-1", "feed-1", "feed-1", "feed-2"]
    assert [p.batch["batch_id"] for p in send.delivered] == ["feed-1", "feed-2"]
    assert len(stop.waits) == 3  # a backoff after each failure
    assert pub.stats.send_failures == 3
    assert (pub.stats.published_batches, pub.stats.published_frames, pub.stats.dropped_frames) == (2, 4, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("publishing failed (ConnectionError: Error 111")
    assert warnings[-1] == "publishing recovered after 3 failures"


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    stop = RecordingStop()
    send = FakeSender(failures=12)
    send.on_send = lambda _: stop.set() if len(send.attempts) > send.failures else None  # stop once it recovers
    pub = make_publisher(send)
    pub.enqueue(frames(0, 1))

    pub.run(stop)

    sleeps = stop.waits
    assert len(sleeps) == 12
    for failures, delay in enumerate(sleeps, start=1):
        base = min(10.0, 0.1 * 2 ** min(failures, 7))
        assert base / 2 <= delay <= base
    assert max(sleeps) <= 10.0
    assert send.attempts == ["feed-1"] * 13


class _FastUntilLong(RecordingStop):
    """Backoffs of the first `fast` failures return at once; later ones really wait (until set)."""

    def __init__(self, fast: int) -> None:
        super().__init__()
        self.fast = fast

    def wait(self, timeout: float | None = None) -> bool:
        if len(self.waits) < self.fast:
            return super().wait(timeout)
        self.waits.append(timeout or 0.0)
        return threading.Event.wait(self, timeout)


def test_stop_during_a_long_backoff_returns_promptly() -> None:
    stop = _FastUntilLong(fast=6)
    send = FakeSender(failures=7)  # the 7th failure backs off 5 to 10 s
    pub = make_publisher(send)
    pub.enqueue(frames(0, 1))
    sender = threading.Thread(target=pub.run, args=(stop,), daemon=True)
    sender.start()
    wait_for(lambda: len(send.attempts) == 7, timeout=30)
    started = time.monotonic()
    stop.set()
    sender.join(15)
    assert not sender.is_alive() and time.monotonic() - started < 1.0
    assert stop.waits[6] >= 5.0
    assert [p.batch["batch_id"] for p in send.delivered] == ["feed-1"]  # the last try, at once, succeeded


def test_stop_during_outage_gives_up_after_five_attempts_and_five_tries_of_the_gaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send = FakeSender(failures=10**6)
    sleeps: list[float] = []
    pub = make_publisher(send, sleeps=sleeps)
    a, b = book("btcusdt@depth20"), book("ethusdt@depth20")
    pub.enqueue([(10, a), (20, b)])
    pub.enqueue([(30, a)])

    stop = drain(pub)

    assert send.attempts == ["feed-1"] * 5 + ["feed-3"] * 5  # the frames, then the gaps recording them
    assert len(stop.waits) == 4 and len(sleeps) == 4  # backoffs between the frames' tries, pauses between the gaps'
    assert pub.pending_frames() == 0 and pub.stats.unpublished_frames == 3
    assert pub.stats.published_frames == 0
    assert pub.unpublished_since == {"btcusdt@depth20": 10, "ethusdt@depth20": 20}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "stopping with 3 frames unpublished: broker unreachable; recorded as gaps of 2 streams",
        "stopping with 2 gaps and 0 feed rejections unpublished: broker unreachable",
    ]


def test_stop_during_outage_publishes_the_gaps_if_the_broker_comes_back() -> None:
    send = FakeSender(failures=7)  # 5 tries of the frames, 2 of the gaps
    pub = make_publisher(send)
    a, b = book("btcusdt@depth20"), book("ethusdt@depth20")
    pub.enqueue([(10, a), (20, b), (25, a)])
    pub.enqueue([(30, a)])
    pub.enqueue_gap(("btcusdt@depth20", 30, 40, "feed stopped"))

    drain(pub)

    reason = "frames not published: feed stopped while Redis was full or unreachable"
    assert sorted(gaps_sent(send.delivered)) == [
        ("btcusdt@depth20", 10, 30, reason),
        ("btcusdt@depth20", 30, 40, "feed stopped"),
        ("ethusdt@depth20", 20, 20, reason),
    ]
    assert [p.n_frames for p in send.delivered] == [0, 0]  # the gap batch retried, then the new gaps
    assert pub.stats.unpublished_frames == 4


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


def test_publishing_holds_above_the_high_water_mark_and_resumes_below(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker(used=850)  # 85% > 80%
    send = FakeSender()
    sent_while_held: list[int] = []

    def sleep(s: float) -> None:
        sent_while_held.append(len(send.attempts))
        broker.now += s
        if len(sent_while_held) == 3:
            broker.used = 500  # workers drained Redis

    pub = Publisher(
        send,
        max_buffered_frames=1_000,
        feed_id="hw",
        sleep=sleep,
        broker_memory=broker.memory,
        high_water=0.8,
        clock=broker.clock,
    )
    for i in range(4):
        pub.enqueue(frames(i * 2, 2))

    drain(pub)

    assert sent_while_held == [0, 0, 0]
    assert send.attempts == ["hw-1", "hw-2", "hw-3", "hw-4"]
    assert broker.checks == 4  # once per (fake) second, not once per batch
    assert (pub.stats.high_water_pauses, pub.stats.paused_high_water) == (1, False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "above its high-water mark (850 of 1000 bytes" in warnings[0]


def test_a_backlog_flush_rechecks_high_water_every_mebibyte() -> None:
    broker = FakeBroker(used=0)
    send = FakeSender(on_send=lambda p: setattr(broker, "used", broker.used + p.n_bytes))
    pub = Publisher(
        send,
        max_buffered_frames=10_000,
        max_buffered_bytes=1 << 30,
        feed_id="hw",
        sleep=lambda s: setattr(broker, "now", broker.now + s),
        broker_memory=broker.memory,
        high_water=0.8,
        clock=broker.clock,
    )
    broker.maxmemory = 2 << 20  # the mark is 1.6 MiB; the backlog is 20 x 256 KiB, sent within one (fake) second
    big = book("btcusdt@depth20") + " " * (256 * 1024)
    for i in range(20):
        pub.enqueue([(i, big)])
    drain(pub)
    assert pub.stats.high_water_pauses == 1
    # Checked after every MiB (4 frames): below after 4, above after 8; without that, all 20 would go at once.
    assert pub.stats.published_frames == 8


def test_high_water_check_failing_or_no_maxmemory_keeps_publishing() -> None:
    for used, maxmemory, error in ((10**9, 0, None), (900, 1_000, ConnectionError("gone"))):
        broker = FakeBroker(used=used, maxmemory=maxmemory)
        broker.error = error
        send = FakeSender()
        pub = Publisher(send, max_buffered_frames=10, sleep=lambda _: None, broker_memory=broker.memory)
        pub.enqueue(frames(0, 1))
        drain(pub)
        assert len(send.delivered) == 1 and not pub.stats.paused_high_water


def test_stop_while_above_high_water_holds_frames_but_publishes_gaps(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker(used=1_000)
    send = FakeSender()
    pub = Publisher(
        send,
        max_buffered_frames=10,
        feed_id="hw",
        sleep=lambda s: setattr(broker, "now", broker.now + s),
        broker_memory=broker.memory,
        clock=broker.clock,
    )
    a = book("btcusdt@depth20")
    pub.enqueue([(10, a), (20, a), (30, a)])
    pub.enqueue_gap(("btcusdt@depth20", 30, 50, "feed stopped"))
    pub.enqueue_rejected(40, "message of 70000 bytes exceeds the 65536-byte limit", "{")
    drain(pub)
    assert pub.stats.published_frames == 0 and pub.stats.unpublished_frames == 3
    reason = "frames not published: feed stopped while Redis was full or unreachable"
    assert sorted(gaps_sent(send.delivered)) == [
        ("btcusdt@depth20", 10, 30, reason),
        ("btcusdt@depth20", 30, 50, "feed stopped"),
    ]
    assert [len(p.batch.get("rejected", [])) for p in send.delivered] == [0, 1, 0]  # gaps, rejection, last gaps
    assert pub.unpublished_since == {"btcusdt@depth20": 10}
    assert "stopping with 3 frames unpublished: Redis above high water" in caplog.text


def test_the_earliest_dropped_frame_counts_as_unpublished_when_its_gap_is_not_published() -> None:
    send = FakeSender(failures=10**6)
    pub = make_publisher(send, max_buffered_frames=2)
    a = book("btcusdt@depth20")
    pub.enqueue([(5, a), (6, a)])
    pub.enqueue([(7, a), (8, a)])  # drops 5 and 6: their gap is pending
    drain(pub)
    assert pub.stats.dropped_frames == 2 and pub.unpublished_since == {"btcusdt@depth20": 5}
