"""feed.outage, as the send sees it: the buffer bounded in frames and bytes (oldest batch dropped, its span kept
as a gap), merged pending gaps and feed rejections that are never dropped, and their caps."""

from __future__ import annotations

import logging
import sys

import pytest

from feed.outage import PendingBatch
from feed.publisher import Publisher
from tests.unit.feed._fakes import (
    FakeSender,
    book,
    drain,
    frames,
    gaps_sent,
    make_publisher,
)

pytestmark = pytest.mark.unit


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
