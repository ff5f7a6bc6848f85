"""The one home of broker writes from the feed: a bounded, ordered outage buffer and a sender thread.

The websocket reader only appends to the buffer (O(1) per frame); a separate thread publishes batches in order,
retrying with backoff while Redis is unreachable and holding them while Redis is above its high-water mark.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from feed.stream import peek
from models.messages import Batch, FeedRejected, Gap, make_batch, transport_options
from models.settings import Settings
from models.vocabulary import EXCHANGE, INGEST_QUEUE, INGEST_TASK

__all__ = ["CelerySender", "PendingBatch", "Publisher", "PublisherStats", "broker_app", "make_celery_sender"]

logger = logging.getLogger(__name__)

OVERFLOW_REASON = "frames dropped: outage buffer full"
UNPUBLISHED_REASON = "frames not published: feed stopped while Redis was full or unreachable"
_FRAME_OVERHEAD = 120  # bytes per buffered frame besides its text: the pair tuple, the payload list, the int
_MAX_PENDING_REJECTED = 1_000  # feed rejections waiting in one merged batch; more are counted, not kept
_MAX_EXCERPT_CHARS = 1_024
_MAX_GAP_STREAMS = 2_048  # streams with pending merged gaps; names come from frames too, so cap them
_HOLD_CHECK_S = 1.0  # the high-water check (INFO memory) runs at most this often...
_HOLD_CHECK_BYTES = 1 << 20  # ...or after this many bytes of frames published, so a backlog cannot overshoot
_GIVE_UP_TRIES = 5  # at stop, with frames that cannot be published: tries to publish the gaps recording them...
_GIVE_UP_PAUSE_S = 1.0  # ...this far apart


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(slots=True)
class PendingBatch:
    batch: Batch
    n_bytes: int = 0  # buffered size of its frames (see Publisher), 0 for gap and rejection batches

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
    buffered_bytes: int = 0
    feed_rejected: int = 0  # messages the feed refused itself (enqueue_rejected)
    rejected_not_recorded: int = 0  # of those, over the pending cap: counted here only
    gaps_not_recorded: int = 0  # gaps of streams beyond the pending merged-gap cap: counted here only
    unpublished_frames: int = 0  # frames still buffered when `run` gave up at stop (recorded as gaps)
    paused_high_water: bool = False
    high_water_pauses: int = 0
    high_water_check_failures: int = 0


class Publisher:
    """Ordered at-least-once hand-off of batches to `send`, which raises on failure.

    The outage buffer holds at most `max_buffered_frames` frames and `max_buffered_bytes` bytes, whichever is hit
    first; a frame counts as `sys.getsizeof(text)` (its in-memory size: 1 byte per character for ASCII, up to 4
    otherwise, plus the str header) plus a fixed 120 bytes for its containers. On overflow the oldest batch of frames
    goes and its span is added to a pending gap of its stream, sent once publishing resumes. Gaps and feed rejections
    are never dropped on overflow: pending gaps merge into one per (stream, kind of reason), for at most 2,048
    streams (more are counted), and go out together in one batch, as pending rejections do.
    While `broker_memory()` (used_memory, maxmemory) reports Redis at or above `high_water` x maxmemory, batches of
    frames are held (gap and rejection batches are tiny and still go); it is asked once a second and after each
    MiB of frames published. A failing check counts as "below" (a WARNING once per run of failures).
    When `run` gives up at stop, frames still buffered become per-stream gaps (UNPUBLISHED_REASON), and
    `unpublished_since` holds each stream's earliest frame not published.
    """

    def __init__(
        self,
        send: Callable[[PendingBatch], None],
        *,
        max_buffered_frames: int,
        max_buffered_bytes: int = _default("buffer_max_bytes"),
        feed_id: str | None = None,
        exchange: str = EXCHANGE,
        sleep: Callable[[float], None] = time.sleep,
        broker_memory: Callable[[], tuple[int, int]] | None = None,
        high_water: float = _default("broker_high_water"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._max = max_buffered_frames
        self._max_bytes = max_buffered_bytes
        self._feed_id = feed_id or uuid.uuid4().hex[:12]
        self._exchange = exchange
        self._sleep = sleep
        self._broker_memory = broker_memory
        self._high_water = high_water
        self._clock = clock
        self._frames: deque[PendingBatch] = deque()  # batches of frames, oldest first; droppable
        self._control: deque[PendingBatch] = deque()  # at most one gap and one rejection batch; never dropped
        self._gaps: dict[tuple[str, str], _PendingGap] = {}  # (stream, reason kind) -> merged gap, not yet queued
        self._gap_streams: set[str] = set()  # the streams of self._gaps
        self._dropping = False  # frames dropped since the last gap batch was built (one ERROR per episode)
        self._rejected: list[FeedRejected] = []  # feed rejections, not yet queued
        self._buffered = 0
        self._buffered_bytes = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._in_flight: PendingBatch | None = None
        self._next_hold_check = 0.0
        self._bytes_since_check = 0
        self._check_failing = False
        self._drops = 0
        self.unpublished_since: dict[str, int] = {}  # see the class docstring
        self.stats = PublisherStats()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        send: Callable[[PendingBatch], None],
        *,
        feed_id: str | None = None,
        broker_memory: Callable[[], tuple[int, int]] | None = None,
    ) -> Publisher:
        """The publisher `settings` describe (buffer_max_frames, buffer_max_bytes, broker_high_water)."""
        return cls(
            send,
            max_buffered_frames=settings.buffer_max_frames,
            max_buffered_bytes=settings.buffer_max_bytes,
            feed_id=feed_id,
            broker_memory=broker_memory,
            high_water=settings.broker_high_water,
        )

    def enqueue(self, frames: list[tuple[int, str]]) -> None:
        """Queue a batch (never blocks). A batch id is fixed here, so a re-sent batch is recognised downstream."""
        n_bytes = sum(sys.getsizeof(raw) for _, raw in frames) + _FRAME_OVERHEAD * len(frames)
        with self._cond:
            newest = PendingBatch(self._make(frames=frames), n_bytes)
            self._frames.append(newest)
            self._buffered += len(frames)
            self._buffered_bytes += n_bytes
            while self._buffered > self._max or self._buffered_bytes > self._max_bytes:
                if not self._drop_oldest(newest):
                    break
            self.stats.buffered_frames = self._buffered
            self.stats.buffered_bytes = self._buffered_bytes
            self._cond.notify()

    def _drop_oldest(self, newest: PendingBatch) -> bool:
        """Drop the oldest batch of frames, but never the newest nor the one being sent (it may be in Redis)."""
        i = 1 if self._frames and self._frames[0] is self._in_flight else 0
        if i >= len(self._frames) or self._frames[i] is newest:
            return False
        old = self._frames[i]
        del self._frames[i]  # i is 0 or 1: O(1)
        self._buffered -= old.n_frames
        self._buffered_bytes -= old.n_bytes
        self.stats.dropped_frames += old.n_frames
        self._drops += 1
        # ERROR on the first drop of an episode (no merged gap pending yet) and every 1,000th: not one line each.
        log = logger.error if not self._dropping or self._drops % 1_000 == 0 else logger.debug
        self._dropping = True
        log(
            "outage buffer full (%d frames, %d bytes): dropped batch %s of %d frames, %d dropped in all",
            self._max,
            self._max_bytes,
            old.batch["batch_id"],
            old.n_frames,
            self.stats.dropped_frames,
        )
        for stream, lo, hi in _spans_of(old):
            self._add_gap(stream, lo, hi, OVERFLOW_REASON)
        return True

    def _add_gap(self, stream: str, start_ns: int, end_ns: int, reason: str) -> None:
        """Merge a gap into the pending one of its stream and kind of reason (caller holds the lock)."""
        key = (stream, _reason_kind(reason))
        pending = self._gaps.get(key)
        if pending is not None:
            pending.merge(start_ns, end_ns, reason)
        elif stream in self._gap_streams or len(self._gap_streams) < _MAX_GAP_STREAMS:
            self._gap_streams.add(stream)
            self._gaps[key] = _PendingGap(start_ns, end_ns, reason)
        else:
            self.stats.gaps_not_recorded += 1

    def _take_gaps(self) -> list[Gap]:
        gaps = [(stream, g.start_ns, g.end_ns, g.reason_text()) for (stream, _), g in self._gaps.items()]
        self._gaps, self._gap_streams, self._dropping = {}, set(), False
        return gaps

    def _make(
        self,
        *,
        frames: list[tuple[int, str]] | None = None,
        gaps: list[Gap] | None = None,
        rejected: list[FeedRejected] | None = None,
    ) -> Batch:
        self._seq += 1
        return make_batch(
            batch_id=f"{self._feed_id}-{self._seq}",
            frames=frames or [],
            exchange=self._exchange,
            gaps=gaps or (),
            rejected=rejected or (),
        )

    def enqueue_gap(self, gap: Gap) -> None:
        """Queue a feed gap. Pending gaps merge per (stream, kind of reason) and share one batch; never dropped on
        overflow."""
        with self._cond:
            self._add_gap(*gap)
            self._cond.notify()

    def enqueue_rejected(self, received_ns: int, reason: str, excerpt: str) -> None:
        """Queue a message the feed refused (recorded as rejected downstream). Rejections waiting to be sent share
        one batch and are never dropped on overflow; beyond 1,000 waiting, more are only counted."""
        with self._cond:
            self.stats.feed_rejected += 1
            if len(self._rejected) >= _MAX_PENDING_REJECTED:
                self.stats.rejected_not_recorded += 1
                return
            self._rejected.append((received_ns, reason, excerpt[:_MAX_EXCERPT_CHARS]))
            self._cond.notify()

    def pending_frames(self) -> int:
        with self._cond:
            return self._buffered

    def pending_batches(self) -> int:
        """Batches queued or waiting to be (merged gaps, rejections); bounded by the frame limits plus gaps."""
        with self._cond:
            return len(self._frames) + len(self._control) + bool(self._gaps) + bool(self._rejected)

    def _has_work(self) -> bool:
        return bool(self._frames or self._control or self._gaps or self._rejected)

    def _next(self, *, healthy: bool, frames_ok: bool = True) -> PendingBatch | None:
        """The batch to send: gaps and rejections first (tiny, order-free downstream), then frames in order, if
        `frames_ok`; None when only frames are left and they are not. Pending gaps and rejections become a batch
        only while sends succeed (or no frame batch is there to retry), so an outage yields one of each, not one
        per retry."""
        if not self._control and (healthy or not self._frames or not frames_ok):
            if self._gaps:
                self._control.append(PendingBatch(self._make(gaps=self._take_gaps())))
            if self._rejected:
                rejected, self._rejected = self._rejected, []
                self._control.append(PendingBatch(self._make(rejected=rejected)))
        if self._control:
            return self._control[0]
        return self._frames[0] if frames_ok and self._frames else None

    def _above_high_water(self) -> bool:
        """Whether Redis is at or above its high-water mark; asks once per second or after 1 MiB of frames
        published, whichever comes first, else gives the last answer."""
        if self._broker_memory is None:
            return False
        now = self._clock()
        if now < self._next_hold_check and self._bytes_since_check < _HOLD_CHECK_BYTES:
            return self.stats.paused_high_water
        self._next_hold_check = now + _HOLD_CHECK_S
        self._bytes_since_check = 0
        try:
            used, maxmemory = self._broker_memory()
        except Exception as exc:  # any broker error: unknown, keep publishing (a failing send is handled)
            self.stats.high_water_check_failures += 1
            log = logger.debug if self._check_failing else logger.warning
            log("high-water check failed (%s: %s): publishing unchecked", type(exc).__name__, exc)
            self._check_failing = True
            used, maxmemory = 0, 0
        else:
            if self._check_failing:
                logger.warning("high-water check works again")
            self._check_failing = False
        above = maxmemory > 0 and used >= self._high_water * maxmemory
        if above and not self.stats.paused_high_water:
            self.stats.high_water_pauses += 1
            logger.warning(
                "Redis above its high-water mark (%d of %d bytes, mark %.0f%%): holding batches, %d frames buffered",
                used,
                maxmemory,
                self._high_water * 100,
                self.pending_frames(),
            )
        elif not above and self.stats.paused_high_water:
            logger.warning("Redis below its high-water mark again (%d of %d bytes): publishing", used, maxmemory)
        self.stats.paused_high_water = above
        return above

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set and the buffer is empty, or `stop` is set and publishing keeps failing or
        Redis stays above its high-water mark: then the frames left become gaps (see `_give_up`)."""
        failures = held = 0
        while True:
            with self._cond:
                while not self._has_work() and not stop.is_set():
                    self._cond.wait(0.2)
                if not self._has_work():
                    return
            above = self._above_high_water()
            with self._cond:
                head = self._in_flight = self._next(healthy=failures == 0, frames_ok=not above)
            if head is None:  # only frames left, held above the high-water mark
                held += 1
                if stop.is_set() and held >= 5:
                    self._give_up("Redis above high water")
                    return
                self._sleep(_HOLD_CHECK_S)
                continue
            held = 0
            try:
                self._send(head)
            except Exception as exc:  # any broker error: keep the batch, back off, try again
                failures += 1
                delay = self._failed(exc, failures)
                if stop.is_set() and failures >= 5:
                    self._give_up("broker unreachable")
                    return
                self._sleep(delay)
                continue
            if failures:
                logger.warning("publishing recovered after %d failures", failures)
                failures = 0
            self._sent(head)

    def _failed(self, exc: Exception, failures: int) -> float:
        """Count a failed send; the delay before the next try."""
        with self._cond:
            self._in_flight = None
        self.stats.send_failures += 1
        delay: float = min(10.0, 0.1 * 2.0 ** min(failures, 7)) * random.uniform(0.5, 1.0)
        log = logger.warning if failures == 1 or failures % 20 == 0 else logger.debug
        log(
            "publishing failed (%s: %s); %d frames buffered, retry in %.1fs",
            type(exc).__name__,
            exc,
            self.pending_frames(),
            delay,
        )
        return delay

    def _give_up(self, why: str) -> None:
        """At stop, frames that cannot be published: record each stream's unpublished span as a gap, note its
        earliest unpublished frame (and dropped one) in `unpublished_since`, then try a few times to publish the
        gaps and rejections, which are small."""
        with self._cond:
            batches, self._frames = list(self._frames), deque()
            n_frames = self._buffered
            self._buffered = self._buffered_bytes = self.stats.buffered_frames = self.stats.buffered_bytes = 0
            self.stats.unpublished_frames += n_frames
            since = self.unpublished_since
            for stream, lo, _ in _pending_gaps_of(self._control, self._gaps, OVERFLOW_REASON):
                since[stream] = min(lo, since.get(stream, lo))
            for pending in batches:
                for stream, lo, hi in _spans_of(pending):
                    since[stream] = min(lo, since.get(stream, lo))
                    self._add_gap(stream, lo, hi, UNPUBLISHED_REASON)
        logger.error(
            "stopping with %d frames unpublished: %s; recorded as gaps of %d streams",
            n_frames,
            why,
            len({stream for pending in batches for stream, _, _ in _spans_of(pending)}),
        )
        for attempt in range(_GIVE_UP_TRIES):
            if attempt:
                self._sleep(_GIVE_UP_PAUSE_S)
            if self._send_control():
                return
        with self._cond:
            n_gaps = len(self._gaps) + sum(len(p.batch.get("gaps", ())) for p in self._control)
            n_rejected = len(self._rejected) + sum(len(p.batch.get("rejected", ())) for p in self._control)
        logger.error("stopping with %d gaps and %d feed rejections unpublished: %s", n_gaps, n_rejected, why)

    def _send_control(self) -> bool:
        """Send the pending gap and rejection batches; False at the first failure."""
        while True:
            with self._cond:
                head = self._in_flight = self._next(healthy=True, frames_ok=False)
            if head is None:
                return True
            try:
                self._send(head)
            except Exception as exc:  # any broker error: the caller tries again a little later
                with self._cond:
                    self._in_flight = None
                self.stats.send_failures += 1
                logger.warning("publishing the last gaps failed (%s: %s)", type(exc).__name__, exc)
                return False
            self._sent(head)

    def _sent(self, head: PendingBatch) -> None:
        with self._cond:
            self._in_flight = None
            if self._control and self._control[0] is head:
                self._control.popleft()
            elif self._frames and self._frames[0] is head:
                self._frames.popleft()
                self._buffered -= head.n_frames
                self._buffered_bytes -= head.n_bytes
                self._bytes_since_check += head.n_bytes
            self.stats.published_batches += 1
            self.stats.published_frames += head.n_frames
            self.stats.buffered_frames = self._buffered
            self.stats.buffered_bytes = self._buffered_bytes


@dataclass(slots=True)
class _PendingGap:
    """A gap waiting to be queued, extended by later gaps of its stream and kind of reason."""

    start_ns: int
    end_ns: int
    reason: str
    others: int = 0  # merged gaps whose reason differed from `reason`

    def merge(self, start_ns: int, end_ns: int, reason: str) -> None:
        self.start_ns, self.end_ns = min(self.start_ns, start_ns), max(self.end_ns, end_ns)
        self.others += reason != self.reason

    def reason_text(self) -> str:
        return f"{self.reason} (and {self.others} more)" if self.others else self.reason


def _reason_kind(reason: str) -> str:
    """What gaps merge by: "reconnected: ..." -> "reconnected", "lastUpdateId reset from 5 to 1" -> "lastUpdateId
    reset", "feed stopped" -> itself."""
    return reason.split(":", 1)[0].split(" from ", 1)[0]


def _pending_gaps_of(
    control: deque[PendingBatch], gaps: dict[tuple[str, str], _PendingGap], reason: str
) -> list[tuple[str, int, int]]:
    """(stream, start_ns, end_ns) of the gaps with this reason not published yet, queued or still merging."""
    out = [(g[0], g[1], g[2]) for p in control for g in p.batch.get("gaps", ()) if g[3] == reason]
    kind = _reason_kind(reason)
    out += [(stream, g.start_ns, g.end_ns) for (stream, k), g in gaps.items() if k == kind]
    return out


def _spans_of(pending: PendingBatch) -> list[tuple[str, int, int]]:
    """Per stream, the span of a batch's frames: what is lost when the batch is dropped."""
    spans: dict[str, tuple[int, int]] = {}
    for ns, raw in pending.batch["frames"]:
        stream = peek(raw)[0]
        if stream is not None:
            lo, hi = spans.get(stream, (ns, ns))
            spans[stream] = (min(lo, ns), max(hi, ns))
    return [(stream, lo, hi) for stream, (lo, hi) in spans.items()]


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


class CelerySender:
    """A `send` for Publisher: one Celery task per batch, by name (the feed never imports worker code)."""

    def __init__(self, redis_url: str, *, key_prefix: str = "") -> None:
        self.app = broker_app(redis_url, key_prefix=key_prefix)

    def __call__(self, pending: PendingBatch) -> None:
        self.app.send_task(INGEST_TASK, args=[pending.batch], queue=INGEST_QUEUE, retry=False)

    def memory(self) -> tuple[int, int]:
        """(used_memory, maxmemory) of the Redis the tasks go to, over the sender's own pooled connection (same
        URL and transport options). Raises what the broker raises."""
        with self.app.producer_pool.acquire(block=True, timeout=3) as producer:
            info = producer.channel.client.info("memory")
        return int(info["used_memory"]), int(info.get("maxmemory", 0))


def make_celery_sender(redis_url: str, *, key_prefix: str = "") -> CelerySender:
    """A `send` for Publisher whose `memory` method is the matching `broker_memory`."""
    return CelerySender(redis_url, key_prefix=key_prefix)
