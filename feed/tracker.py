"""The one home of each subscribed stream's state, shared by every connection of the feed: the lastUpdateId filter
(which also drops the copies a second connection delivers during a rotation), last-seen times, and the gaps of
interruptions, stalls, id resets, feed start, restart and stop. No I/O: frames come in, frames and gaps go out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter

from feed.frames import Frame
from feed.ids import is_reset, is_whole_frame, peek

__all__ = ["OTHER_STREAMS", "Frame", "StreamTracker", "TrackerStats"]

logger = logging.getLogger(__name__)

_STARTED_NS = 1_000  # a "feed started" gap ends at the stream's first frame and lasts this long
OTHER_STREAMS = "?"  # the one per_stream counter for frames of streams not subscribed (or of no stream)


@dataclass(slots=True)
class TrackerStats:
    frames: int = 0  # forwarded
    duplicates: int = 0  # dropped: lastUpdateId not above the stream's last one (stale, repeated, or a rotation copy)
    stale: int = 0  # ...of which below the last one (the rest repeat it): feed/metrics.py tells the two apart
    rejected: int = 0  # messages refused by a connection (over the size cap), reported through on_reject
    per_stream: dict[str, int] = field(default_factory=dict)  # subscribed streams, the rest under OTHER_STREAMS
    last_frame_ns: int = 0


class StreamTracker:
    """Filters and accounts the frames of every connection; thread-safe (one lock, held briefly per frame).

    Frames whose lastUpdateId (in [0, 2**63)) is not above the last one forwarded for their stream are duplicates
    or stale: they are dropped and counted, unless the id is a server reset (feed.ids.is_reset): then the frame is
    forwarded, the stream restarts from it and a "lastUpdateId reset" gap is recorded. Only tracked streams have
    state; frames of others are forwarded and counted under OTHER_STREAMS. `on_gap(stream, start_ns, end_ns, reason)`
    is told of every interval in which a stream may have lost data, each running from the stream's last frame to
    its next one: an interruption (`interrupt`), a stall (no frame for `stall_timeout_s`, see `check_stalls`), an id
    reset, a feed restart (streams passed in `last_seen`, e.g. from the previous process; a stream without one gets
    a short "feed started" gap at its first frame); and, at `stop`, "feed stopped" from each stream's last frame.
    Forwarded frames go to `on_frames(list)`, a list per `handle_many` call, or else to `on_frame(received_ns, raw)`
    one by one.
    """

    def __init__(
        self,
        *,
        on_frame: Callable[[int, str], None] | None = None,
        on_frames: Callable[[list[Frame]], None] | None = None,
        on_gap: Callable[[str, int, int, str], None] | None = None,
        on_reject: Callable[[int, str, str], None] | None = None,
        last_seen: dict[str, int] | None = None,
        stall_timeout_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if on_frames is None:
            if on_frame is None:
                raise TypeError("StreamTracker needs on_frame or on_frames")
            one = on_frame

            def each(frames: list[Frame]) -> None:
                for received_ns, raw in frames:
                    one(received_ns, raw)

            on_frames = each
        self._on_frames = on_frames
        self._on_gap = on_gap
        self._on_reject = on_reject
        self._previous = dict(last_seen or {})
        self._stall_ns = int(stall_timeout_s * 1e9)
        self.clock_ns = clock_ns
        self._lock = threading.Lock()
        self._streams: frozenset[str] = frozenset()
        self._last: dict[str, int] = {}  # stream -> last forwarded lastUpdateId
        # stream -> (start_ns, reason) of an interruption that ends with the stream's next frame (-1: just before it)
        self._interrupted: dict[str, tuple[int, str]] = {}
        self.last_seen: dict[str, int] = {}  # tracked streams only
        self.stopped: dict[str, int] = {}  # after `stop`, per stream given a "feed stopped" gap: that stop time
        self.stats = TrackerStats()

    @property
    def streams(self) -> frozenset[str]:
        """The streams tracked now."""
        return self._streams

    def track(self, streams: Iterable[str]) -> None:
        """Start tracking `streams` (those already tracked are left alone): each one's first frame ends a "feed
        restarted" gap from where the previous process saw it last, or a short "feed started" one."""
        with self._lock:
            new = [s for s in streams if s not in self._streams]
            for s in new:
                prev = self._previous.pop(s, None)
                self._interrupted[s] = (prev, "feed restarted") if prev is not None else (-1, "feed started")
            self._streams = self._streams | frozenset(new)

    def untrack(self, streams: Iterable[str], reason: str = "unsubscribed") -> None:
        """Stop tracking `streams`: each that had a frame gets a gap from its last frame to now (`reason`)."""
        now = self.clock_ns()
        gaps = []
        with self._lock:
            gone = frozenset(streams) & self._streams
            self._streams = self._streams - gone
            for s in gone:
                self._interrupted.pop(s, None)
                self._last.pop(s, None)
                seen = self.last_seen.pop(s, None)
                if seen is not None:
                    gaps.append((s, seen, max(now, seen), reason))
        self._report(gaps)

    def interrupt(self, streams: Iterable[str], reason: str) -> None:
        """These streams may have lost data from their last frame on (a connection went down)."""
        now = self.clock_ns()
        with self._lock:
            for s in streams:
                if s in self._streams and s not in self._interrupted:
                    self._interrupted[s] = (self.last_seen.get(s, now), reason)

    def check_stalls(self) -> None:
        """Mark streams silent for longer than the stall timeout; call it now and then (the feed's ticker does)."""
        now = self.clock_ns()
        stalled = []
        with self._lock:
            for s, seen in self.last_seen.items():
                if now - seen > self._stall_ns and s not in self._interrupted:
                    self._interrupted[s] = (seen, "stalled")
                    stalled.append((s, now - seen))
        for s, ns in stalled:
            logger.warning("stream %s stalled: no frame for %.0fs", s, ns / 1e9)

    def stop(self) -> None:
        """The feed stops seeing its streams now: a gap from each stream's last frame, so its window is incomplete.
        `stopped` then holds where the next feed process's "feed restarted" gap should start, so that the two
        processes do not both report the span before the stop."""
        now = self.clock_ns()
        with self._lock:
            seen = dict(self.last_seen)
        self.stopped = {s: max(now, ns) for s, ns in seen.items()}
        self._report([(s, ns, self.stopped[s], "feed stopped") for s, ns in seen.items()])

    def reject(self, received_ns: int, reason: str, excerpt: str) -> None:
        """A message a connection refused (over the size cap): counted and passed on to `on_reject`."""
        self.stats.rejected += 1
        logger.warning("refused a message: %s", reason)
        if self._on_reject is not None:
            self._on_reject(received_ns, reason, excerpt)

    def handle(self, received_ns: int, raw: str) -> str | None:
        """Forward a data message unless it is a duplicate; returns its stream when it is tracked and was forwarded
        (None for a dropped duplicate or a message of no tracked stream)."""
        return self._handle([(received_ns, raw)])

    def handle_many(self, frames: list[Frame]) -> None:
        """`handle` each frame in order (under one lock), forwarding those kept in one list."""
        self._handle(frames)

    def _handle(self, frames: list[Frame]) -> str | None:
        """Filter and account `frames`, report their gaps, forward the rest; the last frame's stream as `handle`
        returns it."""
        peeked = list(map(peek, map(itemgetter(1), frames)))  # outside the lock
        out: list[Frame] = []
        gaps = []
        stats, last_ids, last_seen, interrupted = self.stats, self._last, self.last_seen, self._interrupted
        per_stream = stats.per_stream
        forwarded: str | None = None
        with self._lock:
            streams = self._streams
            for frame, (stream, luid) in zip(frames, peeked, strict=True):
                forwarded = None
                if stream is None or stream not in streams:
                    per_stream[OTHER_STREAMS] = per_stream.get(OTHER_STREAMS, 0) + 1
                else:
                    if luid is not None:
                        last = last_ids.get(stream, -1)
                        if luid > last:
                            last_ids[stream] = luid
                        elif is_whole_frame(frame[1], luid):  # a broken frame that only looks stale is forwarded
                            if not is_reset(last, luid):
                                stats.duplicates += 1
                                if luid < last:
                                    stats.stale += 1
                                continue
                            last_ids[stream] = luid
                            self._reset_locked(stream, frame[0], f"lastUpdateId reset from {last} to {luid}")
                    last_seen[stream] = frame[0]
                    if interrupted:
                        gap = interrupted.pop(stream, None)
                        if gap is not None:
                            received_ns = frame[0]
                            start = gap[0] if gap[0] >= 0 else received_ns - _STARTED_NS
                            gaps.append((stream, start, received_ns, gap[1]))
                    per_stream[stream] = per_stream.get(stream, 0) + 1
                    forwarded = stream
                out.append(frame)
            if out:
                stats.frames += len(out)
                stats.last_frame_ns = out[-1][0]
        if gaps:
            self._report(gaps)
        if out:
            self._on_frames(out)
        return forwarded

    def _reset_locked(self, stream: str, received_ns: int, reason: str) -> None:
        """The server restarted its ids: the stream's data since its last frame may be missing."""
        logger.warning("stream %s: %s", stream, reason)
        pending = self._interrupted.get(stream)
        if pending is None:
            self._interrupted[stream] = (self.last_seen.get(stream, received_ns), reason)
        else:
            self._interrupted[stream] = (pending[0], f"{pending[1]}; {reason}")

    def _report(self, gaps: list[tuple[str, int, int, str]]) -> None:
        if self._on_gap is not None:
            for g in gaps:
                self._on_gap(*g)
