"""The one home of what the feed has not published yet: batches of frames, bounded and in order (the oldest dropped
on overflow, its span kept as a gap), plus the pending gaps and feed rejections, which are never dropped.
Thread-safe, no I/O and no waiting: the reader appends (O(1) per frame), the publisher's thread takes the head."""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from operator import itemgetter

from feed.gaps import PendingGaps, spans_of
from models.messages import Batch, FeedRejected, Gap, make_batch

__all__ = ["OVERFLOW_REASON", "UNPUBLISHED_REASON", "OutageBuffer", "PendingBatch", "PublisherStats"]

logger = logging.getLogger(__name__)

OVERFLOW_REASON = "frames dropped: outage buffer full"
UNPUBLISHED_REASON = "frames not published: feed stopped while Redis was full or unreachable"
_FRAME_OVERHEAD = 120  # bytes per buffered frame besides its text: the pair tuple, the payload list, the int
_MAX_PENDING_REJECTED = 1_000  # feed rejections waiting in one merged batch; more are counted, not kept
_MAX_EXCERPT_CHARS = 1_024


@dataclass(slots=True)
class PendingBatch:
    batch: Batch
    n_bytes: int = 0  # buffered size of its frames (see OutageBuffer), 0 for gap and rejection batches

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
    unpublished_frames: int = 0  # frames still buffered when the publisher gave up at stop (recorded as gaps)
    paused_high_water: bool = False
    high_water_pauses: int = 0
    high_water_check_failures: int = 0


class OutageBuffer:
    """Batches waiting to be published, in order, with their batch ids fixed (a re-sent batch is recognised
    downstream).

    It holds at most `max_buffered_frames` frames and `max_buffered_bytes` bytes, whichever is hit first; a frame
    counts as `sys.getsizeof(text)` (its in-memory size: 1 byte per character for ASCII, up to 4 otherwise, plus the
    str header) plus a fixed 120 bytes for its containers. On overflow the oldest batch of frames goes and its span
    is added to a pending gap of its stream. Gaps and feed rejections are never dropped on overflow: pending gaps
    merge (see feed.gaps.PendingGaps; gaps of streams past its cap are counted) and go out together in one batch,
    as pending rejections do. After `_abandon_frames`, `unpublished_since` holds each stream's earliest frame not
    published.
    """

    def __init__(
        self, *, max_buffered_frames: int, max_buffered_bytes: int, feed_id: str | None, exchange: str
    ) -> None:
        self._max = max_buffered_frames
        self._max_bytes = max_buffered_bytes
        self._feed_id = feed_id or uuid.uuid4().hex[:12]
        self._exchange = exchange
        self._frames: deque[PendingBatch] = deque()  # batches of frames, oldest first; droppable
        self._control: deque[PendingBatch] = deque()  # at most one gap and one rejection batch; never dropped
        self._gaps = PendingGaps()  # not yet queued
        self._dropping = False  # frames dropped since the last gap batch was built (one ERROR per episode)
        self._rejected: list[FeedRejected] = []  # feed rejections, not yet queued
        self._buffered = 0
        self._buffered_bytes = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._in_flight: PendingBatch | None = None  # the head being sent: never dropped (it may be in Redis)
        self._drops = 0
        self.unpublished_since: dict[str, int] = {}  # see the class docstring
        self.stats = PublisherStats()

    def enqueue(self, frames: list[tuple[int, str]]) -> None:
        """Queue a batch (never blocks). A batch id is fixed here, so a re-sent batch is recognised downstream."""
        n_bytes = sum(map(sys.getsizeof, map(itemgetter(1), frames))) + _FRAME_OVERHEAD * len(frames)
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
        for stream, lo, hi in spans_of(old.batch["frames"]):
            self._add_gap(stream, lo, hi, OVERFLOW_REASON)
        return True

    def _add_gap(self, stream: str, start_ns: int, end_ns: int, reason: str) -> None:
        """Merge a gap into the pending ones (caller holds the lock)."""
        if not self._gaps.add(stream, start_ns, end_ns, reason):
            self.stats.gaps_not_recorded += 1

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

    def _has_work(self) -> bool:
        return bool(self._frames or self._control or self._gaps or self._rejected)

    def _take_head(self, *, healthy: bool, frames_ok: bool = True) -> PendingBatch | None:
        """The batch to send, marked in flight: gaps and rejections first (tiny, order-free downstream), then frames
        in order, if `frames_ok`; None when only frames are left and they are not. Pending gaps and rejections
        become a batch only while sends succeed (or no frame batch is there to retry), so an outage yields one of
        each, not one per retry."""
        with self._cond:
            if not self._control and (healthy or not self._frames or not frames_ok):
                if self._gaps:
                    self._control.append(PendingBatch(self._make(gaps=self._gaps.take())))
                    self._dropping = False
                if self._rejected:
                    rejected, self._rejected = self._rejected, []
                    self._control.append(PendingBatch(self._make(rejected=rejected)))
            head: PendingBatch | None = None
            if self._control:
                head = self._control[0]
            elif frames_ok and self._frames:
                head = self._frames[0]
            self._in_flight = head
            return head

    def _not_sent(self) -> None:
        """The head in flight was not sent: it stays first, and droppable again."""
        with self._cond:
            self._in_flight = None

    def _sent(self, head: PendingBatch) -> None:
        with self._cond:
            self._in_flight = None
            if self._control and self._control[0] is head:
                self._control.popleft()
            elif self._frames and self._frames[0] is head:
                self._frames.popleft()
                self._buffered -= head.n_frames
                self._buffered_bytes -= head.n_bytes
            self.stats.published_batches += 1
            self.stats.published_frames += head.n_frames
            self.stats.buffered_frames = self._buffered
            self.stats.buffered_bytes = self._buffered_bytes

    def _abandon_frames(self) -> tuple[int, int]:
        """Forget the frames left, recording each stream's unpublished span as a gap (UNPUBLISHED_REASON) and its
        earliest unpublished frame (or dropped one) in `unpublished_since`; (frames, streams) abandoned."""
        with self._cond:
            batches, self._frames = list(self._frames), deque()
            n_frames = self._buffered
            self._buffered = self._buffered_bytes = self.stats.buffered_frames = self.stats.buffered_bytes = 0
            self.stats.unpublished_frames += n_frames
            since = self.unpublished_since
            for stream, lo, _ in self._pending_gaps(OVERFLOW_REASON):
                since[stream] = min(lo, since.get(stream, lo))
            streams = set()
            for pending in batches:
                for stream, lo, hi in spans_of(pending.batch["frames"]):
                    since[stream] = min(lo, since.get(stream, lo))
                    self._add_gap(stream, lo, hi, UNPUBLISHED_REASON)
                    streams.add(stream)
        return n_frames, len(streams)

    def _pending_gaps(self, reason: str) -> list[tuple[str, int, int]]:
        """(stream, start_ns, end_ns) of the gaps of this reason not published yet, queued or still merging."""
        out = [(g[0], g[1], g[2]) for p in self._control for g in p.batch.get("gaps", ()) if g[3] == reason]
        return out + self._gaps.spans(reason)

    def _unpublished_control(self) -> tuple[int, int]:
        """(gaps, feed rejections) not published yet."""
        with self._cond:
            n_gaps = len(self._gaps) + sum(len(p.batch.get("gaps", ())) for p in self._control)
            n_rejected = len(self._rejected) + sum(len(p.batch.get("rejected", ())) for p in self._control)
        return n_gaps, n_rejected
