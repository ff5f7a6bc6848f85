"""The one home of broker writes from the feed: a bounded, ordered outage buffer and a sender thread.

The websocket reader only appends to the buffer; a separate thread publishes batches in order, retrying with
backoff while Redis is unreachable. On overflow the oldest batches are dropped, counted and logged as ERROR.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from feed.stream import peek
from models.messages import EXCHANGE, INGEST_QUEUE, INGEST_TASK, Batch, Gap, make_batch, transport_options

__all__ = ["PendingBatch", "Publisher", "PublisherStats", "broker_app", "make_celery_sender"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PendingBatch:
    batch: Batch

    @property
    def n_frames(self) -> int:
        return len(self.batch["frames"])


@dataclass(slots=True)
class PublisherStats:
    published_batches: int = 0
    published_frames: int = 0
    dropped_frames: int = 0
    send_failures: int = 0
    buffered_frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Publisher:
    """Ordered at-least-once hand-off of batches to `send`, which raises on failure."""

    def __init__(
        self,
        send: Callable[[PendingBatch], None],
        *,
        max_buffered_frames: int,
        feed_id: str | None = None,
        exchange: str = EXCHANGE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._send = send
        self._max = max_buffered_frames
        self._feed_id = feed_id or uuid.uuid4().hex[:12]
        self._exchange = exchange
        self._sleep = sleep
        self._queue: deque[PendingBatch] = deque()
        self._buffered = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._in_flight: PendingBatch | None = None
        self.stats = PublisherStats()

    def enqueue(self, frames: list[tuple[int, str]]) -> None:
        """Queue a batch (never blocks). A batch id is fixed here, so a re-sent batch is recognised downstream."""
        with self._cond:
            newest = self._new_batch(frames=frames)
            self._buffered += len(frames)
            while self._buffered > self._max:
                # The oldest batch of frames, but never the newest nor the one being sent (it may be in Redis).
                old = next(
                    (b for b in self._queue if b.n_frames and b is not newest and b is not self._in_flight), None
                )
                if old is None:
                    break
                self._queue.remove(old)
                self._buffered -= old.n_frames
                self.stats.dropped_frames += old.n_frames
                logger.error(
                    "outage buffer full (%d frames): dropped batch %s of %d frames, %d dropped in all",
                    self._max,
                    old.batch["batch_id"],
                    old.n_frames,
                    self.stats.dropped_frames,
                )
                for gap in _gaps_of(old, "frames dropped: outage buffer full"):
                    self._new_batch(gaps=[gap])
            self.stats.buffered_frames = self._buffered
            self._cond.notify()

    def _new_batch(self, *, frames: list[tuple[int, str]] | None = None, gaps: list[Gap] | None = None) -> PendingBatch:
        self._seq += 1
        batch = make_batch(
            batch_id=f"{self._feed_id}-{self._seq}", frames=frames or [], exchange=self._exchange, gaps=gaps or ()
        )
        pending = PendingBatch(batch)
        self._queue.append(pending)
        return pending

    def enqueue_gap(self, gap: Gap) -> None:
        """Queue a feed gap (a batch without frames). Gap batches are never dropped on overflow."""
        with self._cond:
            self._new_batch(gaps=[gap])
            self._cond.notify()

    def pending_frames(self) -> int:
        with self._cond:
            return self._buffered

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set and the buffer is empty (or `stop` is set and publishing keeps failing)."""
        failures = 0
        while True:
            with self._cond:
                while not self._queue and not stop.is_set():
                    self._cond.wait(0.2)
                if not self._queue:
                    return
                head = self._in_flight = self._queue[0]
            try:
                self._send(head)
            except Exception as exc:  # any broker error: keep the batch, back off, try again
                with self._cond:
                    self._in_flight = None
                failures += 1
                self.stats.send_failures += 1
                delay = min(10.0, 0.1 * 2 ** min(failures, 7)) * random.uniform(0.5, 1.0)
                log = logger.warning if failures == 1 or failures % 20 == 0 else logger.debug
                log(
                    "publishing failed (%s: %s); %d frames buffered, retry in %.1fs",
                    type(exc).__name__,
                    exc,
                    self.pending_frames(),
                    delay,
                )
                if stop.is_set() and failures >= 5:
                    logger.error("stopping with %d frames unpublished: broker unreachable", self.pending_frames())
                    return
                self._sleep(delay)
                continue
            if failures:
                logger.warning("publishing recovered after %d failures", failures)
                failures = 0
            with self._cond:
                self._in_flight = None
                if self._queue and self._queue[0] is head:
                    self._queue.popleft()
                    self._buffered -= head.n_frames
                self.stats.published_batches += 1
                self.stats.published_frames += head.n_frames
                self.stats.buffered_frames = self._buffered


def _gaps_of(pending: PendingBatch, reason: str) -> list[Gap]:
    """Per stream, the span of a batch's frames: what is lost when the batch is dropped."""
    spans: dict[str, tuple[int, int]] = {}
    for ns, raw in pending.batch["frames"]:
        stream = peek(raw)[0]
        if stream is not None:
            lo, hi = spans.get(stream, (ns, ns))
            spans[stream] = (min(lo, ns), max(hi, ns))
    return [(stream, lo, hi, reason) for stream, (lo, hi) in spans.items()]


def broker_app(redis_url: str, *, key_prefix: str = "", name: str = "bookfeed-feed") -> Celery:
    """A Celery app that only publishes (tasks by name), configured like the workers' broker side."""
    app = Celery(name, broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            **transport_options(key_prefix),
            # Frames are text already: skip kombu's base64 layer (a third more bytes in Redis, and CPU).
            "body_encoding": None,
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
        },
    )
    return app


def make_celery_sender(redis_url: str, *, key_prefix: str = "") -> Callable[[PendingBatch], None]:
    """A `send` for Publisher: one Celery task per batch, by name (the feed never imports worker code)."""
    app = broker_app(redis_url, key_prefix=key_prefix)

    def send(pending: PendingBatch) -> None:
        app.send_task(INGEST_TASK, args=[pending.batch], queue=INGEST_QUEUE, retry=False)

    return send
