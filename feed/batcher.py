"""Micro-batching of frames: flush on size or age. No I/O; the clock and the sink are injected."""

from __future__ import annotations

import threading
from collections.abc import Callable

from feed.frames import Frame
from models.settings import Settings

__all__ = ["Batcher", "Frame"]


class Batcher:
    """Collects frames and hands them to `emit` in lists of at most `max_frames`, or when the oldest frame has waited
    `max_wait_ms`. Thread-safe: the reader calls `add`, a timer thread calls `flush_if_due`.

    `emit` runs outside the lock that guards the frames, so readers keep adding while a batch is handed on; batches
    still reach `emit` one at a time and in the order they were cut (a second lock, taken before the first is let
    go)."""

    def __init__(
        self,
        *,
        max_frames: int,
        max_wait_ms: int,
        emit: Callable[[list[Frame]], None],
        clock_ns: Callable[[], int],
    ) -> None:
        self._max_frames = max_frames
        self._max_wait_ns = max_wait_ms * 1_000_000
        self._emit = emit
        self._clock_ns = clock_ns
        self._frames: list[Frame] = []
        self._first_ns = 0
        self._lock = threading.Lock()
        self._emit_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, emit: Callable[[list[Frame]], None], clock_ns: Callable[[], int]
    ) -> Batcher:
        """The batcher `settings` describe (batch_max_frames, batch_max_wait_ms)."""
        return cls(
            max_frames=settings.batch_max_frames, max_wait_ms=settings.batch_max_wait_ms, emit=emit, clock_ns=clock_ns
        )

    def add(self, frame: Frame) -> None:
        """Append a frame; emits the batch when it is full."""
        self.add_many([frame])

    def add_many(self, frames: list[Frame]) -> None:
        """Append frames (one lock for all); emits each batch they fill."""
        with self._lock:
            if not self._frames:
                self._first_ns = self._clock_ns()
            self._frames.extend(frames)
            if len(self._frames) < self._max_frames:
                return
            full = self._cut_full_locked()
        try:
            for batch in full:
                self._emit(batch)
        finally:
            self._emit_lock.release()

    def flush_if_due(self) -> None:
        with self._lock:
            if not (self._frames and self._clock_ns() - self._first_ns >= self._max_wait_ns):
                return
            frames = self._cut_locked()
        self._emit_cut(frames)

    def flush(self) -> None:
        """Emit the frames collected so far; returns once every batch cut before it has been emitted too."""
        with self._lock:
            frames = self._cut_locked() if self._frames else None
            if frames is None:
                self._emit_lock.acquire()  # wait for a batch being emitted elsewhere: flush() means "all out"
        if frames is None:
            self._emit_lock.release()
            return
        self._emit_cut(frames)

    def seconds_until_due(self) -> float:
        with self._lock:
            if not self._frames:
                return self._max_wait_ns / 1e9
            return max(0.0, (self._first_ns + self._max_wait_ns - self._clock_ns()) / 1e9)

    def _cut_full_locked(self) -> list[list[Frame]]:
        """Cut every full batch (the rest stays, as young as now) and take the emit lock, under `_lock`."""
        n, frames = self._max_frames, self._frames
        if len(frames) == n:
            full, self._frames = [frames], []
        else:  # the frames that overflow the last full batch arrived in this call: their age starts now
            cut = len(frames) - len(frames) % n
            full, self._frames = [frames[i : i + n] for i in range(0, cut, n)], frames[cut:]
            if self._frames:
                self._first_ns = self._clock_ns()
        self._emit_lock.acquire()
        return full

    def _cut_locked(self) -> list[Frame]:
        """Take the frames and the emit lock, both under `_lock`: the order of cuts is the order of emits."""
        frames, self._frames = self._frames, []
        self._emit_lock.acquire()
        return frames

    def _emit_cut(self, frames: list[Frame]) -> None:
        try:
            self._emit(frames)
        finally:
            self._emit_lock.release()
