"""Micro-batching of frames: flush on size or age. No I/O; the clock and the sink are injected."""

from __future__ import annotations

import threading
from collections.abc import Callable

from models.settings import Settings

__all__ = ["Batcher", "Frame"]

Frame = tuple[int, str]  # (received_ns, raw text)


class Batcher:
    """Collects frames and hands them to `emit` in lists of at most `max_frames`, or when the oldest frame has waited
    `max_wait_ms`. Thread-safe: the reader calls `add`, a timer thread calls `flush_if_due`."""

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
        with self._lock:
            if not self._frames:
                self._first_ns = self._clock_ns()
            self._frames.append(frame)
            if len(self._frames) >= self._max_frames:
                self._flush_locked()

    def flush_if_due(self) -> None:
        with self._lock:
            if self._frames and self._clock_ns() - self._first_ns >= self._max_wait_ns:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            if self._frames:
                self._flush_locked()

    def seconds_until_due(self) -> float:
        with self._lock:
            if not self._frames:
                return self._max_wait_ns / 1e9
            return max(0.0, (self._first_ns + self._max_wait_ns - self._clock_ns()) / 1e9)

    def _flush_locked(self) -> None:
        frames, self._frames = self._frames, []
        self._emit(frames)
