"""feed.tracker: the per-stream state every connection shares: stale and repeated frames dropped (so a rotation's
second copy too), broken ones forwarded, id resets, state kept for tracked streams only, and the gaps of
interruptions, stalls, feed start, restart, stop and unsubscribing."""

from __future__ import annotations

import sys
import threading

import pytest

from feed.tracker import OTHER_STREAMS, StreamTracker

pytestmark = pytest.mark.unit

BTC, ETH = "btcusdt@depth20", "ethusdt@depth20"
Gap = tuple[str, int, int, str]


class _Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000_000

    def __call__(self) -> int:
        return self.ns


def _frame(luid: int, stream: str = BTC) -> str:
    return f'{{"stream":"{stream}","data":{{"lastUpdateId":{luid},"bids":[],"asks":[]}}}}'


def _tracker(last_seen: dict[str, int] | None = None) -> tuple[StreamTracker, list[str], list[Gap], _Clock]:
    clock = _Clock()
    got: list[str] = []
    gaps: list[Gap] = []
    tracker = StreamTracker(
        on_frame=lambda ns, raw: got.append(raw),
        on_gap=lambda *g: gaps.append(g),
        last_seen=last_seen,
        stall_timeout_s=5,
        clock_ns=clock,
    )
    tracker.track([BTC, ETH])
    return tracker, got, gaps, clock


def test_stale_and_repeated_frames_are_dropped_and_counted_per_stream() -> None:
    tracker, got, _, _ = _tracker()
    for ns, raw in enumerate([_frame(10), _frame(12), _frame(12), _frame(11), _frame(5, ETH), _frame(13)]):
        tracker.handle(ns, raw)
    assert got == [_frame(10), _frame(12), _frame(5, ETH), _frame(13)]
    assert tracker.stats.duplicates == 2
    assert tracker.stats.per_stream == {BTC: 3, ETH: 1}


def test_two_connections_delivering_the_same_frames_forward_each_once() -> None:
    """During a rotation both connections carry the stream: each frame arrives twice, from two threads."""
    tracker, got, _, _ = _tracker()
    frames = [_frame(i) for i in range(10**9, 10**9 + 5000)]
    start = threading.Barrier(2)

    def deliver() -> None:
        start.wait()
        for ns, raw in enumerate(frames):
            tracker.handle(ns, raw)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a check-then-set race shows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert sorted(got) == sorted(frames) and len(got) == len(frames)
    assert tracker.stats.duplicates == len(frames)


def test_a_frame_cut_inside_its_id_is_forwarded_not_dropped() -> None:
    tracker, got, _, _ = _tracker()
    tracker.handle(1, _frame(236268423789))
    cut = '{"stream":"btcusdt@depth20","data":{"lastUpdateId":236268423}'  # looks stale, is broken
    tracker.handle(2, cut)
    assert got[-1] == cut
    assert tracker.stats.duplicates == 0


def test_unparseable_text_is_forwarded_for_the_worker_to_reject() -> None:
    tracker, got, _, _ = _tracker()
    assert tracker.handle(1, "garbage") is None
    assert got == ["garbage"]


def test_a_reconnect_is_a_gap_per_stream_from_its_last_frame_to_its_next() -> None:
    tracker, _, gaps, _ = _tracker()
    tracker.handle(100, _frame(1))
    tracker.handle(200, _frame(1, ETH))
    del gaps[:]  # "feed started"
    tracker.interrupt([BTC, ETH], "reconnected: server closed the connection")
    tracker.handle(900, _frame(2))
    assert gaps == [(BTC, 100, 900, "reconnected: server closed the connection")]
    tracker.handle(950, _frame(3))  # one gap per interruption
    tracker.handle(990, _frame(2, ETH))
    assert gaps[-1] == (ETH, 200, 990, "reconnected: server closed the connection")
    assert len(gaps) == 2


def test_an_interruption_touches_only_the_streams_named() -> None:
    tracker, _, gaps, _ = _tracker()
    tracker.handle(100, _frame(1))
    tracker.handle(200, _frame(1, ETH))
    del gaps[:]
    tracker.interrupt([ETH, "solusdt@depth20"], "reconnected: x")  # not tracked: ignored
    tracker.handle(900, _frame(2))
    tracker.handle(901, _frame(2, ETH))
    assert gaps == [(ETH, 200, 901, "reconnected: x")]


def test_a_silent_stream_is_a_stall_gap_once_it_speaks_again() -> None:
    tracker, _, gaps, clock = _tracker()
    tracker.handle(clock.ns, _frame(1))
    del gaps[:]  # "feed started"
    start = clock.ns
    clock.ns += 4 * 10**9
    tracker.check_stalls()
    assert gaps == [] and BTC not in tracker._interrupted
    clock.ns += 2 * 10**9
    tracker.check_stalls()
    tracker.check_stalls()  # marked once
    tracker.handle(clock.ns, _frame(2))
    assert gaps == [(BTC, start, clock.ns, "stalled")]


def test_where_the_previous_feed_stopped_starts_a_restart_gap() -> None:
    tracker, _, gaps, _ = _tracker(last_seen={BTC: 50, "solusdt@depth20": 7})
    tracker.handle(500, _frame(1))
    assert gaps == [(BTC, 50, 500, "feed restarted")]
    assert "solusdt@depth20" not in tracker._interrupted  # not ours


def test_a_stream_without_a_previous_feed_gets_a_feed_started_gap_at_its_first_frame() -> None:
    tracker, _, gaps, _ = _tracker(last_seen={ETH: 50})
    tracker.handle(5_000, _frame(1))
    tracker.handle(6_000, _frame(2))
    tracker.handle(7_000, _frame(1, ETH))
    assert gaps == [(BTC, 4_000, 5_000, "feed started"), (ETH, 50, 7_000, "feed restarted")]


def test_stop_is_a_feed_stopped_gap_per_stream_that_had_frames() -> None:
    tracker, _, gaps, clock = _tracker()
    tracker.handle(clock.ns, _frame(1))
    seen = clock.ns
    del gaps[:]
    clock.ns += 3 * 10**9
    tracker.stop()
    assert gaps == [(BTC, seen, clock.ns, "feed stopped")]  # ethusdt had no frame: nothing to stop
    assert tracker.stopped == {BTC: clock.ns}  # what the feed saves as last seen for the next process


def test_an_unsubscribed_stream_gets_a_gap_and_loses_its_state() -> None:
    tracker, got, gaps, clock = _tracker()
    tracker.handle(100, _frame(1, ETH))
    del gaps[:]
    clock.ns = 500
    tracker.untrack([ETH])
    assert gaps == [(ETH, 100, 500, "unsubscribed")]
    assert tracker.streams == {BTC} and ETH not in tracker.last_seen and ETH not in tracker._last
    tracker.handle(600, _frame(1, ETH))  # a frame in flight: forwarded, no state
    assert got[-1] == _frame(1, ETH) and tracker.stats.per_stream[OTHER_STREAMS] == 1
    tracker.track([ETH])  # subscribed again later: a new start
    tracker.handle(700, _frame(2, ETH))
    assert gaps[-1] == (ETH, 700 - 1_000, 700, "feed started")


# --- lastUpdateId out of range, id resets (issue 7, point 2) ------------------------------------------------------

ABSURD = 9999999999999999999  # 19 digits, beyond 2**63 - 1: the worker rejects it


def test_an_absurd_id_is_forwarded_and_does_not_silence_its_stream() -> None:
    tracker, got, _, _ = _tracker()
    for ns, luid in enumerate([10, ABSURD, 11, 2**63 - 1, 12]):
        tracker.handle(ns, _frame(luid))
    assert got == [_frame(10), _frame(ABSURD), _frame(11), _frame(2**63 - 1), _frame(12)]
    assert tracker.stats.duplicates == 0  # 12 came after the largest valid id, yet far below it: a reset


def test_ids_going_back_after_a_reconnect_are_a_reset_gap_and_the_frames_are_forwarded() -> None:
    tracker, got, gaps, _ = _tracker()
    tracker.handle(100, _frame(500_000))
    tracker.handle(200, _frame(500_001))
    del gaps[:]
    tracker.interrupt([BTC], "reconnected: server closed the connection")
    tracker.handle(900, _frame(500_001))  # the server repeats its last book: still a duplicate
    tracker.handle(950, _frame(3))  # ids restarted
    tracker.handle(960, _frame(4))
    tracker.handle(970, _frame(3))  # stale again within the new sequence
    assert got == [_frame(500_000), _frame(500_001), _frame(3), _frame(4)]
    assert gaps == [(BTC, 200, 950, "reconnected: server closed the connection; lastUpdateId reset from 500001 to 3")]
    assert tracker.stats.duplicates == 2


def test_a_server_a_few_updates_behind_after_a_reconnect_is_not_forwarded_twice() -> None:
    tracker, got, gaps, _ = _tracker()
    for ns, luid in enumerate([1000, 1001, 1002], start=100):
        tracker.handle(ns, _frame(luid))
    del gaps[:]
    tracker.interrupt([BTC], "reconnected: server closed the connection")
    for ns, luid in enumerate([1000, 1001, 1002, 1003], start=900):  # two updates behind
        tracker.handle(ns, _frame(luid))
    assert got == [_frame(1000), _frame(1001), _frame(1002), _frame(1003)]
    assert tracker.stats.duplicates == 3
    assert gaps == [(BTC, 102, 903, "reconnected: server closed the connection")]


def test_a_bogus_jump_forward_is_undone_by_the_next_real_id() -> None:
    tracker, got, gaps, _ = _tracker()
    tracker.handle(100, _frame(1000))
    tracker.handle(110, _frame(900_000))  # bogus, yet in range
    del gaps[:]
    for ns, luid in enumerate([1001, 1002, 1003], start=120):
        tracker.handle(ns, _frame(luid))
    assert got == [_frame(1000), _frame(900_000), _frame(1001), _frame(1002), _frame(1003)]
    assert gaps == [(BTC, 110, 120, "lastUpdateId reset from 900000 to 1001")]
    assert tracker.stats.duplicates == 0


def test_a_small_bogus_jump_silences_at_most_its_span_and_that_silence_is_a_stall_gap() -> None:
    tracker, got, gaps, clock = _tracker()  # stall timeout 5 s
    tracker.handle(clock.ns, _frame(1000))
    tracker.handle(clock.ns, _frame(1500))  # 500 ahead: not a reset when the real ids resume below it
    jumped = clock.ns
    del gaps[:]
    for luid in range(1001, 1501):  # one update every 20 ms: 10 s of real updates hidden behind the jump
        clock.ns += 20_000_000
        tracker.handle(clock.ns, _frame(luid))
        tracker.check_stalls()
    clock.ns += 20_000_000
    tracker.handle(clock.ns, _frame(1501))
    assert got == [_frame(1000), _frame(1500), _frame(1501)]
    assert tracker.stats.duplicates == 500
    assert gaps == [(BTC, jumped, clock.ns, "stalled")]


def test_a_small_step_back_without_interruption_is_stale_a_huge_one_is_a_reset() -> None:
    tracker, _, gaps, _ = _tracker()
    tracker.handle(100, _frame(5_000_000))
    tracker.handle(110, _frame(4_999_999))
    assert tracker.stats.duplicates == 1
    del gaps[:]
    tracker.handle(120, _frame(7))
    assert gaps == [(BTC, 100, 120, "lastUpdateId reset from 5000000 to 7")]
    assert tracker.stats.duplicates == 1


def test_only_tracked_streams_have_state_the_rest_share_one_counter() -> None:
    tracker, got, _, _ = _tracker()
    huge = "x" * (1 << 20)
    for ns in range(50):
        tracker.handle(ns, _frame(ns + 1, f"s{ns}@depth20"))
    tracker.handle(60, _frame(1, huge))
    tracker.handle(61, _frame(1))
    assert len(got) == 52  # all forwarded: the worker judges them
    assert tracker.stats.per_stream == {OTHER_STREAMS: 51, BTC: 1}
    assert set(tracker.last_seen) == {BTC}
    assert set(tracker._last) == {BTC}
    assert set(tracker._interrupted) <= set(tracker.streams)


def test_handle_many_filters_like_handle_and_forwards_one_list() -> None:
    clock = _Clock()
    lists: list[list[tuple[int, str]]] = []
    tracker = StreamTracker(on_frames=lists.append, clock_ns=clock)
    tracker.track([BTC, ETH])
    frames = [(1, _frame(10)), (2, _frame(12)), (3, _frame(12)), (4, _frame(11)), (5, _frame(5, ETH)), (6, "x")]
    tracker.handle_many(frames)
    assert lists == [[(1, _frame(10)), (2, _frame(12)), (5, _frame(5, ETH)), (6, "x")]]
    assert (tracker.stats.frames, tracker.stats.duplicates, tracker.stats.stale) == (4, 2, 1)
    assert tracker.stats.per_stream == {BTC: 2, ETH: 1, OTHER_STREAMS: 1}
    assert tracker.last_seen == {BTC: 2, ETH: 5} and tracker.stats.last_frame_ns == 6
    tracker.handle_many([(7, _frame(12))])  # nothing kept: nothing forwarded
    assert len(lists) == 1


def test_a_tracker_needs_somewhere_to_forward() -> None:
    with pytest.raises(TypeError):
        StreamTracker()
