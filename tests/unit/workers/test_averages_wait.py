"""How long the averages wait for books still in the queue (workers.averages.queued_from)."""

from __future__ import annotations

from workers.averages import queued_from

NOW = 1_790_000_000.0


def test_nothing_queued_means_no_wait() -> None:
    assert queued_from(None, now_s=NOW, wait_s=120) is None


def test_a_frame_queued_within_the_wait_holds_the_windows_from_its_receive_time() -> None:
    assert queued_from(int((NOW - 60.5) * 1e9), now_s=NOW, wait_s=120) == NOW - 60.5
    assert queued_from(int((NOW - 120) * 1e9), now_s=NOW, wait_s=120) == NOW - 120


def test_a_frame_queued_longer_than_the_wait_holds_nothing() -> None:
    # A long backlog or a batch stuck in its retries: the averages go on and are corrected when the books arrive.
    assert queued_from(int((NOW - 121) * 1e9), now_s=NOW, wait_s=120) is None
    assert queued_from(int((NOW - 1) * 1e9), now_s=NOW, wait_s=0) is None
