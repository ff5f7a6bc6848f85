"""The poison-batch ladder of workers.deliveries.deliver, with workers.ingest's two functions replaced by scripted
fakes: each test lists what the store and reject attempts do, and checks the calls and the decision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from models.errors import InvalidBookError, StorageError, TransientStorageError
from workers import deliveries, ingest
from workers.deliveries import MAX_BACKOFF_S, Limits, RetryLater, Tries, deliver

LIMITS = Limits(max_retries=30, poison_retries=3, max_deliveries=5)
BATCH = {"batch_id": "b"}


class Script:
    """Fake ingest: each call pops the next outcome (an exception to raise, or a value to return)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, Any]] = []

    def _next(self) -> Any:
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    def store(self, engine: Any, batch: Any, *, frame_by_frame: bool = False) -> Any:
        self.calls.append(("frame by frame" if frame_by_frame else "normal", None))
        return self._next()

    def reject(self, engine: Any, batch: Any, *, reason: str) -> int:
        self.calls.append(("reject", reason))
        return int(self._next())


class _Stored:
    def as_dict(self) -> dict[str, Any]:
        return {"n_books": 2}


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Script]:
    def make(*outcomes: Any) -> Script:
        s = Script(*outcomes)
        monkeypatch.setattr(ingest, "ingest_batch", s.store)
        monkeypatch.setattr(ingest, "reject_batch", s.reject)
        return s

    return make


def run(tries: Tries | None = None, deliveries_: int | None = 1) -> dict[str, Any] | RetryLater:
    engine: Any = None  # the fakes never touch it
    return deliver(engine, BATCH, deliveries=deliveries_, tries=tries or Tries(), limits=LIMITS)


def test_a_first_unexpected_error_is_retried_with_backoff(script: Callable[..., Script]) -> None:
    s = script(StorageError("claim refused"))
    step = run()
    assert isinstance(step, RetryLater) and step.tries == Tries(poison=1) and 0.5 <= step.countdown_s <= 1.0
    assert s.calls == [("normal", None)]


def test_past_the_poison_budget_frame_by_frame_then_rejected_within_one_delivery(
    script: Callable[..., Script],
) -> None:
    s = script(RuntimeError("bug"), RuntimeError("bug again"), 7)
    assert run(Tries(outage=2, poison=3)) == {"rejected_batch": 7}
    assert [c for c, _ in s.calls] == ["normal", "frame by frame", "reject"]
    assert s.calls[-1][1] == "not stored after 5 failures: RuntimeError: bug again"


def test_outage_budget_spent_rejects_and_an_outage_in_reject_retries_every_minute(
    script: Callable[..., Script],
) -> None:
    s = script(TransientStorageError("down"), 4)
    assert run(Tries(outage=30)) == {"rejected_batch": 4}
    assert s.calls[-1] == ("reject", "not stored after 30 retries: TransientStorageError: down")
    s = script(TransientStorageError("down"), TransientStorageError("still down"))
    step = run(Tries(outage=30, poison=1))
    assert isinstance(step, RetryLater) and step.tries == Tries(outage=31, poison=1)
    assert step.countdown_s == MAX_BACKOFF_S
    assert [c for c, _ in s.calls] == ["normal", "reject"]


def test_outages_do_not_eat_the_poison_budget(script: Callable[..., Script]) -> None:
    s = script(TransientStorageError("down"))
    step = run(Tries(outage=3, poison=3))
    assert isinstance(step, RetryLater) and step.tries == Tries(outage=4, poison=3)
    assert s.calls == [("normal", None)]


def test_an_unreadable_envelope_is_rejected_at_once(script: Callable[..., Script]) -> None:
    s = script(InvalidBookError("unknown exchange 'x'"), 3)
    assert run() == {"rejected_batch": 3}
    assert s.calls[-1] == ("reject", "unreadable batch: unknown exchange 'x'")


def test_redeliveries_past_the_budget_go_straight_to_reject(script: Callable[..., Script]) -> None:
    s = script(0)  # the batch was stored by a delivery whose worker died before acknowledging it
    assert run(Tries(outage=1), deliveries_=9) == {"rejected_batch": 0}
    assert s.calls == [("reject", "delivered 9 times without being stored")]


def test_a_failing_reject_is_raised_not_retried(script: Callable[..., Script]) -> None:
    script(InvalidBookError("bad"), RuntimeError("cannot record"))
    with pytest.raises(RuntimeError, match="cannot record"):
        run()


def test_stored_batch_summary(script: Callable[..., Script]) -> None:
    script(_Stored())
    assert run() == {"n_books": 2}


def test_retry_counts_from_another_producer_count_as_none() -> None:
    assert Tries.from_args("3", -1) == Tries()
    assert Tries.from_args(2, True) == Tries(outage=2)
    assert Tries(outage=2, poison=1).as_kwargs() == {"outage_retries": 2, "poison_retries": 1}
    assert deliveries.backoff_s(20) <= MAX_BACKOFF_S
