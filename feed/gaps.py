"""The one home of merging the feed's gaps while they wait to be published: one per stream and kind of reason, for a
bounded number of streams, and the spans of frames that are lost. Pure: no I/O, no locking (the publisher locks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from feed.ids import peek
from models.messages import Gap

__all__ = ["MAX_GAP_STREAMS", "PendingGaps", "reason_kind", "spans_of"]

MAX_GAP_STREAMS = 2_048  # streams with pending merged gaps; names come from frames too, so cap them


def reason_kind(reason: str) -> str:
    """What gaps merge by: "reconnected: ..." -> "reconnected", "lastUpdateId reset from 5 to 1" -> "lastUpdateId
    reset", "feed stopped" -> itself."""
    return reason.split(":", 1)[0].split(" from ", 1)[0]


def spans_of(frames: Iterable[Sequence[Any]]) -> list[tuple[str, int, int]]:
    """(stream, first_ns, last_ns) of the frames of each stream: what is lost when they are."""
    spans: dict[str, tuple[int, int]] = {}
    for ns, raw in frames:
        stream = peek(raw)[0]
        if stream is not None:
            lo, hi = spans.get(stream, (ns, ns))
            spans[stream] = (min(lo, ns), max(hi, ns))
    return [(stream, lo, hi) for stream, (lo, hi) in spans.items()]


@dataclass(slots=True)
class _MergedGap:
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


class PendingGaps:
    """Gaps not yet queued, merged per (stream, kind of reason) into one spanning them all, whose reason is the
    first one's plus "(and N more)" for those that differed; for at most `max_streams` streams."""

    def __init__(self, max_streams: int = MAX_GAP_STREAMS) -> None:
        self._max_streams = max_streams
        self._gaps: dict[tuple[str, str], _MergedGap] = {}
        self._streams: set[str] = set()  # the streams of self._gaps

    def __len__(self) -> int:
        return len(self._gaps)

    def add(self, stream: str, start_ns: int, end_ns: int, reason: str) -> bool:
        """Merge a gap in; False (and the gap is not kept) when it would be of one stream too many."""
        key = (stream, reason_kind(reason))
        pending = self._gaps.get(key)
        if pending is not None:
            pending.merge(start_ns, end_ns, reason)
        elif stream in self._streams or len(self._streams) < self._max_streams:
            self._streams.add(stream)
            self._gaps[key] = _MergedGap(start_ns, end_ns, reason)
        else:
            return False
        return True

    def take(self) -> list[Gap]:
        """The merged gaps, oldest key first; none are left pending."""
        gaps = [(stream, g.start_ns, g.end_ns, g.reason_text()) for (stream, _), g in self._gaps.items()]
        self._gaps, self._streams = {}, set()
        return gaps

    def spans(self, reason: str) -> list[tuple[str, int, int]]:
        """(stream, start_ns, end_ns) of the pending gaps of this reason's kind."""
        kind = reason_kind(reason)
        return [(stream, g.start_ns, g.end_ns) for (stream, k), g in self._gaps.items() if k == kind]
