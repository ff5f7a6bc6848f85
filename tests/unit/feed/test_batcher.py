"""feed.batcher: flush on size and on age, with a fake clock and a recording sink."""

from __future__ import annotations

import threading

import pytest

from feed.batcher import Batcher, Frame

pytestmark = pytest.mark.unit

MS = 1_000_000


class FakeClock:
    def __init__(self, now_ns: int = 1_700_000_000 * 10**9) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * MS)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emitted() -> list[list[Frame]]:
    return []


def make_batcher(
    clock: FakeClock, emitted: list[list[Frame]], *, max_frames: int = 3, max_wait_ms: int = 100
) -> Batcher:
    return Batcher(max_frames=max_frames, max_wait_ms=max_wait_ms, emit=emitted.append, clock_ns=clock)


def frame(i: int) -> Frame:
    return (i, f'{{"stream":"btcusdt@depth20@100ms","data":{{"lastUpdateId":{i}}}}}')


def test_flushes_when_full(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_frames=3)
    for i in range(7):
        b.add(frame(i))
    assert emitted == [[frame(0), frame(1), frame(2)], [frame(3), frame(4), frame(5)]]
    b.flush()
    assert emitted[-1] == [frame(6)]


def test_max_frames_one_emits_every_frame(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_frames=1)
    b.add(frame(1))
    b.add(frame(2))
    assert emitted == [[frame(1)], [frame(2)]]


def test_not_due_before_max_wait(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_wait_ms=100)
    b.add(frame(1))
    clock.advance_ms(99.999)
    b.flush_if_due()
    assert emitted == []


def test_due_at_max_wait(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_wait_ms=100)
    b.add(frame(1))
    clock.advance_ms(60)
    b.add(frame(2))
    clock.advance_ms(40)
    b.flush_if_due()
    assert emitted == [[frame(1), frame(2)]]


def test_age_is_measured_from_the_oldest_frame_of_the_batch(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_frames=2, max_wait_ms=100)
    b.add(frame(1))
    b.add(frame(2))  # size flush
    clock.advance_ms(150)
    b.add(frame(3))  # starts a new batch: its age starts now, not at frame 1
    clock.advance_ms(50)
    b.flush_if_due()
    assert emitted == [[frame(1), frame(2)]]
    clock.advance_ms(50)
    b.flush_if_due()
    assert emitted == [[frame(1), frame(2)], [frame(3)]]


def test_empty_batcher_never_emits(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted)
    clock.advance_ms(10_000)
    b.flush_if_due()
    b.flush()
    assert emitted == []


def test_flush_emits_partial_batch_once(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted)
    b.add(frame(1))
    b.flush()
    b.flush()
    clock.advance_ms(1_000)
    b.flush_if_due()
    assert emitted == [[frame(1)]]


def test_order_is_kept_across_batches(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_frames=4)
    for i in range(10):
        b.add(frame(i))
        clock.advance_ms(30)
        b.flush_if_due()
    b.flush()
    assert [f for batch in emitted for f in batch] == [frame(i) for i in range(10)]
    assert all(1 <= len(batch) <= 4 for batch in emitted)


def test_seconds_until_due(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_wait_ms=100)
    assert b.seconds_until_due() == pytest.approx(0.1)  # empty: a full period
    b.add(frame(1))
    clock.advance_ms(30)
    assert b.seconds_until_due() == pytest.approx(0.07)
    clock.advance_ms(100)
    assert b.seconds_until_due() == 0.0  # overdue: never negative
    b.flush_if_due()
    assert b.seconds_until_due() == pytest.approx(0.1)


def test_emitted_list_is_not_reused(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_frames=2)
    for i in range(4):
        b.add(frame(i))
    assert emitted[0] is not emitted[1]
    assert emitted[0] == [frame(0), frame(1)]


# --- emit outside the lock ----------------------------------------------------------------------------------------

WAIT_S = 10  # a guard against a hang, never a speed target: every wait below ends as soon as its event is set


def test_frames_are_added_while_a_batch_is_being_emitted(clock: FakeClock) -> None:
    emitting, release = threading.Event(), threading.Event()
    out: list[list[Frame]] = []

    def slow_emit(frames: list[Frame]) -> None:
        emitting.set()
        assert release.wait(WAIT_S)
        out.append(frames)

    b = Batcher(max_frames=2, max_wait_ms=100, emit=slow_emit, clock_ns=clock)
    reader = threading.Thread(target=lambda: [b.add(frame(i)) for i in range(2)])
    reader.start()
    assert emitting.wait(WAIT_S)
    added = threading.Thread(target=b.add, args=(frame(2),))
    added.start()
    added.join(WAIT_S)
    assert not added.is_alive()  # the frame went in while the first batch was still in emit
    release.set()
    reader.join(WAIT_S)
    b.flush()
    assert out == [[frame(0), frame(1)], [frame(2)]]


def test_batches_cut_while_one_is_emitted_wait_their_turn(clock: FakeClock) -> None:
    emitting, release = threading.Event(), threading.Event()
    out: list[list[Frame]] = []

    def emit(frames: list[Frame]) -> None:
        if not out and not emitting.is_set():
            emitting.set()
            assert release.wait(WAIT_S)
        out.append(frames)

    b = Batcher(max_frames=2, max_wait_ms=100, emit=emit, clock_ns=clock)
    first = threading.Thread(target=lambda: [b.add(frame(i)) for i in range(2)])
    first.start()
    assert emitting.wait(WAIT_S)
    second = threading.Thread(target=lambda: [b.add(frame(i)) for i in range(2, 4)])
    second.start()
    second.join(0.2)  # gives the second batch a chance to overtake, were it allowed to
    assert out == []
    release.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert out == [[frame(0), frame(1)], [frame(2), frame(3)]]


def test_flush_returns_after_a_batch_emitted_elsewhere(clock: FakeClock) -> None:
    emitting, release = threading.Event(), threading.Event()
    out: list[list[Frame]] = []

    def slow_emit(frames: list[Frame]) -> None:
        emitting.set()
        assert release.wait(WAIT_S)
        out.append(frames)

    b = Batcher(max_frames=1, max_wait_ms=100, emit=slow_emit, clock_ns=clock)
    reader = threading.Thread(target=b.add, args=(frame(0),))
    reader.start()
    assert emitting.wait(WAIT_S)
    flusher = threading.Thread(target=b.flush)
    flusher.start()
    flusher.join(0.2)
    assert flusher.is_alive()  # nothing of its own to emit, but a batch is still on its way out
    release.set()
    flusher.join(WAIT_S)
    reader.join(WAIT_S)
    assert out == [[frame(0)]]


def test_add_many_cuts_every_full_batch_in_order_and_keeps_the_rest(
    clock: FakeClock, emitted: list[list[Frame]]
) -> None:
    b = make_batcher(clock, emitted, max_frames=3)
    b.add(frame(0))
    b.add_many([frame(i) for i in range(1, 8)])  # 8 frames so far: two full batches, two left
    assert emitted == [[frame(0), frame(1), frame(2)], [frame(3), frame(4), frame(5)]]
    b.add_many([])
    b.flush()
    assert emitted[-1] == [frame(6), frame(7)]


def test_frames_left_over_by_add_many_wait_from_that_call(clock: FakeClock, emitted: list[list[Frame]]) -> None:
    b = make_batcher(clock, emitted, max_frames=3, max_wait_ms=100)
    b.add(frame(0))
    clock.advance_ms(90)
    b.add_many([frame(1), frame(2), frame(3)])  # the first three go; frame 3 arrived now
    clock.advance_ms(90)
    b.flush_if_due()
    assert emitted == [[frame(0), frame(1), frame(2)]]
    clock.advance_ms(10)
    b.flush_if_due()
    assert emitted[-1] == [frame(3)]
