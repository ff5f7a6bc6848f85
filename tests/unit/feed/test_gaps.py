"""feed.gaps: pending gaps merge per stream and kind of reason, for a bounded number of streams; spans of frames."""

from __future__ import annotations

import pytest

from feed.gaps import PendingGaps, reason_kind, spans_of
from tests.unit.feed._fakes import book

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("reconnected: server closed the connection", "reconnected"),
        ("lastUpdateId reset from 5 to 1", "lastUpdateId reset"),
        ("feed stopped", "feed stopped"),
        ("frames dropped: outage buffer full", "frames dropped"),
    ],
)
def test_gaps_merge_by_the_kind_of_their_reason(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_gaps_of_a_stream_and_kind_merge_into_one_spanning_them_all() -> None:
    gaps = PendingGaps()
    assert gaps.add("a", 10, 20, "reconnected: x")
    assert gaps.add("a", 5, 15, "reconnected: y")
    assert gaps.add("a", 30, 40, "reconnected: x")
    assert gaps.add("a", 12, 13, "stalled")
    assert gaps.add("b", 1, 2, "reconnected: x")
    assert len(gaps) == 3 and gaps.spans("reconnected: z") == [("a", 5, 40), ("b", 1, 2)]
    assert gaps.take() == [
        ("a", 5, 40, "reconnected: x (and 1 more)"),
        ("a", 12, 13, "stalled"),
        ("b", 1, 2, "reconnected: x"),
    ]
    assert len(gaps) == 0 and gaps.take() == []


def test_streams_past_the_cap_are_refused_but_known_streams_still_merge() -> None:
    gaps = PendingGaps(max_streams=2)
    assert gaps.add("a", 1, 2, "stalled") and gaps.add("b", 1, 2, "stalled")
    assert not gaps.add("c", 1, 2, "stalled")
    assert gaps.add("a", 3, 4, "feed stopped")  # a stream already pending: another kind is kept
    assert sorted(g[0] for g in gaps.take()) == ["a", "a", "b"]
    assert gaps.add("c", 1, 2, "stalled")  # the cap counts pending streams only


def test_spans_of_frames_per_stream_ignore_frames_of_no_stream() -> None:
    frames = [(30, book("a@depth20")), (10, book("b@depth20")), (20, book("a@depth20")), (5, "garbage")]
    assert sorted(spans_of(frames)) == [("a@depth20", 20, 30), ("b@depth20", 10, 10)]
