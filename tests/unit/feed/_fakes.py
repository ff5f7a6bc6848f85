"""Fakes for the publisher's tests: a recording `send`, a recording `stop`, a broker's memory, frame builders."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from feed.outage import PendingBatch
from feed.publisher import Publisher


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


class RecordingStop(threading.Event):
    """A stop whose waits (the publisher's backoffs) return at once, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


def frames(start: int, n: int) -> list[tuple[int, str]]:
    return [(i, f"frame-{i}") for i in range(start, start + n)]


def book(stream: str, luid: int = 1) -> str:
    return f'{{"stream":"{stream}","data":{{"lastUpdateId":{luid}}}}}'


def make_publisher(
    send: Callable[[PendingBatch], None], *, max_buffered_frames: int = 1_000, sleeps: list[float] | None = None
) -> Publisher:
    sink = sleeps if sleeps is not None else []
    return Publisher(send, max_buffered_frames=max_buffered_frames, feed_id="feed", sleep=sink.append)


def drain(pub: Publisher, stop: RecordingStop | None = None) -> RecordingStop:
    """Run the sender to completion in this thread: with stop already set, run() returns once the buffer is empty.
    Returns the stop, whose `waits` are the backoffs."""
    stop = stop or RecordingStop()
    stop.set()
    pub.run(stop)
    return stop


def gaps_sent(sent: list[PendingBatch]) -> list[tuple[Any, ...]]:
    return [tuple(g) for p in sent for g in p.batch.get("gaps", [])]


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
