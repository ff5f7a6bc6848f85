"""feed.publisher: ordered hand-off to a fake `send`, retries with an injected sleep, bounded outage buffer."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from feed.publisher import PendingBatch, Publisher
from models.messages import PAYLOAD_VERSION
from models.vocabulary import EXCHANGE

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


def test_stop_during_outage_gives_up_after_five_attempts_and_five_tries_of_the_gaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send = FakeSender(failures=10**6)
    sleeps: list[float] = []
    pub = make_publisher(send, sleeps=sleeps)
    a, b = book("btcusdt@depth20"), book("ethusdt@depth20")
    pub.enqueue([(10, a), (20, b)])
    pub.enqueue([(30, a)])

    drain(pub)

    assert send.attempts == ["feed-1"] * 5 + ["feed-3"] * 5  # the frames, then the gaps recording them
    assert len(sleeps) == 4 + 4
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


def book(stream: str, luid: int = 1) -> str:
    return f'{{"stream":"{stream}","data":{{"lastUpdateId":{luid}}}}}'


def gaps_sent(sent: list[PendingBatch]) -> list[tuple[Any, ...]]:
    return [tuple(g) for p in sent for g in p.batch.get("gaps", [])]


def test_overflow_gaps_merge_per_stream_and_are_never_dropped() -> None:
    send = FakeSender()
    pub = make_publisher(send, max_buffered_frames=2)
    a, b = book("btcusdt@depth20"), book("ethusdt@depth20")
    pub.enqueue([(10, a), (20, b), (30, a)])  # over the limit, but the newest batch is kept
    pub.enqueue([(40, a), (50, a)])  # drops the first batch
    pub.enqueue([(60, a), (70, a)])  # drops the second: the btcusdt gap grows, no second gap
    assert pub.stats.dropped_frames == 5
    drain(pub)
    reason = "frames dropped: outage buffer full"
    assert sorted(gaps_sent(send.delivered)) == [
        ("btcusdt@depth20", 10, 50, reason),
        ("ethusdt@depth20", 20, 20, reason),
    ]
    assert [p.n_frames for p in send.delivered] == [0, 2]  # one gap batch, then the kept frames


def test_a_thousand_overflows_during_an_outage_make_one_gap_per_stream() -> None:
    streams = [f"s{i}usdt@depth20" for i in range(3)]
    pub: Publisher
    peak: list[int] = []

    def outage_meanwhile(pending: PendingBatch) -> None:
        # The reader goes on during each failed attempt: 260 one-frame batches, nearly all over the limit.
        if len(send.attempts) <= send.failures:
            base = len(send.attempts) * 1_000
            for i in range(260):
                pub.enqueue([(base + i, book(streams[i % 3], base + i))])
            peak.append(pub.pending_batches())

    send = FakeSender(failures=4, on_send=outage_meanwhile)
    pub = make_publisher(send, max_buffered_frames=10)
    pub.enqueue([(0, book(streams[0]))])

    drain(pub)

    assert pub.stats.dropped_frames >= 1_000
    assert max(peak) <= 10 + 1  # at most one frame per batch kept, plus the one pending merged gap
    gap_batches = [p for p in send.delivered if p.batch.get("gaps")]
    assert len(gap_batches) == 1  # sent once, when publishing resumed
    gaps = gaps_sent(send.delivered)
    assert sorted(g[0] for g in gaps) == streams
    kept = {ns for p in send.delivered for ns, _ in p.batch["frames"]}
    for stream, lo, hi, _ in gaps:  # each gap spans exactly that stream's dropped frames
        assert isinstance(lo, int) and isinstance(hi, int)
        dropped = [ns for ns in range(5_000) if ns not in kept and ns % 1_000 < 260 and ns >= 1_000]
        own = [ns for ns in dropped if streams[(ns % 1_000) % 3] == stream]
        assert (lo, hi) == (min(own), max(own))
    assert pub.stats.published_frames + pub.stats.dropped_frames == 1 + 4 * 260


def test_buffer_is_bounded_in_bytes_as_well_as_frames() -> None:
    send = FakeSender()
    pub = Publisher(send, max_buffered_frames=10_000, max_buffered_bytes=100_000, feed_id="b", sleep=lambda _: None)
    big = book("btcusdt@depth20") + " " * 10_000
    for i in range(30):
        pub.enqueue([(i, big)])
    assert 0 < pub.stats.buffered_bytes <= 100_000
    assert pub.pending_frames() == 100_000 // (sys.getsizeof(big) + 120)  # 9 frames of ~10 KB fit
    assert pub.stats.dropped_frames == 30 - pub.pending_frames()
    # Text is counted by its in-memory size: four bytes a character once it holds an emoji.
    wide = Publisher(send, max_buffered_frames=10_000, max_buffered_bytes=100_000, sleep=lambda _: None)
    for i in range(30):
        wide.enqueue([(i, big + "\U0001f600")])
    assert wide.pending_frames() == 2


def test_feed_rejections_share_one_batch_and_are_never_dropped() -> None:
    send = FakeSender()
    pub = make_publisher(send, max_buffered_frames=2)
    pub.enqueue_rejected(5, "message over 65536 bytes", "x" * 5_000)
    pub.enqueue([(1, "a"), (2, "b")])
    pub.enqueue_rejected(6, "message over 65536 bytes", "{")
    pub.enqueue([(3, "c"), (4, "d")])  # overflow: drops frames only
    drain(pub)
    (rejection,) = [p.batch for p in send.delivered if "rejected" in p.batch]
    assert rejection["frames"] == []
    assert rejection["rejected"] == [[5, "message over 65536 bytes", "x" * 1_024], [6, "message over 65536 bytes", "{"]]
    assert pub.stats.feed_rejected == 2 and pub.stats.dropped_frames == 2


def test_feed_rejections_waiting_are_capped_and_the_rest_counted() -> None:
    send = FakeSender()
    pub = make_publisher(send)
    for i in range(1_500):
        pub.enqueue_rejected(i, "too big", "x")
    assert pub.pending_batches() == 1
    drain(pub)
    (rejection,) = [p.batch for p in send.delivered]
    assert len(rejection["rejected"]) == 1_000
    assert (pub.stats.feed_rejected, pub.stats.rejected_not_recorded) == (1_500, 500)


class FakeBroker:
    """(used_memory, maxmemory) on demand, and a clock that the publisher's injected sleep advances."""

    def __init__(self, used: int, maxmemory: int = 1_000) -> None:
        self.used, self.maxmemory = used, maxmemory
        self.now = 0.0
        self.checks = 0
        self.error: Exception | None = None

    def memory(self) -> tuple[int, int]:
        self.checks += 1
        if self.error is not None:
            raise self.error
        return self.used, self.maxmemory

    def clock(self) -> float:
        return self.now


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


def test_a_failing_high_water_check_warns_once_per_run_of_failures(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker(used=100)
    pub = Publisher(FakeSender(), max_buffered_frames=10, broker_memory=broker.memory, clock=broker.clock)
    for error in (PermissionError("NOPERM this user has no permissions to run the 'info' command"),) * 3 + (
        None,
        ConnectionError("gone"),
        ConnectionError("gone"),
    ):
        broker.error = error
        broker.now += 1.0
        assert pub._above_high_water() is False
    assert broker.checks == 6 and pub.stats.high_water_check_failures == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "high-water check failed (PermissionError: NOPERM this user has no permissions to run the 'info' command): "
        "publishing unchecked",
        "high-water check works again",
        "high-water check failed (ConnectionError: gone): publishing unchecked",
    ]


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


# --- pending gaps merge into one batch (bounded) -------------------------------------------------------------------


def test_gaps_during_an_outage_merge_per_stream_and_kind_into_one_batch() -> None:
    pub: Publisher
    peak: list[int] = []
    streams = ["s0usdt@depth20", "s1usdt@depth20"]

    def outage_meanwhile(pending: PendingBatch) -> None:
        if len(send.attempts) <= send.failures:
            base = len(send.attempts) * 1_000
            for i in range(300):  # the reader goes on: reconnects, stalls and resets of two streams
                stream = streams[i % 2]
                pub.enqueue_gap((stream, base + i, base + i + 1, f"reconnected: attempt {len(send.attempts)}"))
                pub.enqueue_gap((stream, base + i, base + i + 2, "stalled"))
                pub.enqueue_gap((stream, base + i, base + i + 3, f"lastUpdateId reset from {i + 9} to {i}"))
            peak.append(pub.pending_batches())

    send = FakeSender(failures=3, on_send=outage_meanwhile)
    pub = make_publisher(send)
    pub.enqueue(frames(0, 1))
    drain(pub)

    assert max(peak) <= 2  # the frame batch being retried and one set of merged gaps
    gap_batches = [p for p in send.delivered if p.batch.get("gaps")]
    assert len(gap_batches) == 1
    # 450 gaps of each stream and kind: spans merged, the first reason kept with a count of the differing ones
    assert sorted(gaps_sent(send.delivered)) == [
        ("s0usdt@depth20", 1_000, 3_299, "reconnected: attempt 1 (and 300 more)"),
        ("s0usdt@depth20", 1_000, 3_300, "stalled"),
        ("s0usdt@depth20", 1_000, 3_301, "lastUpdateId reset from 9 to 0 (and 447 more)"),
        ("s1usdt@depth20", 1_001, 3_300, "reconnected: attempt 1 (and 300 more)"),
        ("s1usdt@depth20", 1_001, 3_301, "stalled"),
        ("s1usdt@depth20", 1_001, 3_302, "lastUpdateId reset from 10 to 1 (and 447 more)"),
    ]


def test_pending_gaps_are_capped_by_stream_and_the_rest_counted() -> None:
    send = FakeSender()
    pub = make_publisher(send)
    for i in range(2_100):
        pub.enqueue_gap((f"s{i}@depth20", i, i + 1, "stalled"))
    pub.enqueue_gap(("s0@depth20", 0, 1, "feed stopped"))  # a stream already pending: another kind is kept
    assert pub.pending_batches() == 1
    drain(pub)
    assert len(gaps_sent(send.delivered)) == 2_048 + 1
    assert pub.stats.gaps_not_recorded == 2_100 - 2_048
