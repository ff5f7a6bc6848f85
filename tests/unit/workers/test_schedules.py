"""workers.schedules.Aligned: due on a UTC grid, through celery beat's own scheduler entries."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest
from celery import Celery
from celery.beat import ScheduleEntry

from workers.schedules import Aligned

T0 = 1_790_000_010.0  # a multiple of 30 s


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _clock(box: list[float]) -> Aligned:
    return Aligned(30, 6, nowfun=lambda: _at(box[0]))


def test_due_at_the_offset_past_each_multiple_of_the_period() -> None:
    s = Aligned(30, 6)
    assert s.next_after(T0) == T0 + 6
    assert s.next_after(T0 + 6) == T0 + 36  # strictly after
    assert s.next_after(T0 + 5.999) == T0 + 6
    assert Aligned(60, 21).next_after(T0) == T0 + 51  # T0 is 30 s past a minute: 21 s past the next one


def test_is_due_once_per_slot_and_says_when_to_look_again() -> None:
    now = [T0 + 1]
    s = _clock(now)
    due, next_s = s.is_due(_at(T0 - 20))  # last run in the previous slot, next slot at T0 + 6
    assert (due, next_s) == (False, pytest.approx(5.0))
    now[0] = T0 + 6.2
    due, next_s = s.is_due(_at(T0 - 20))
    assert due and next_s == pytest.approx(29.8)
    due, next_s = s.is_due(_at(T0 + 6.2))  # just ran: not again until the next slot
    assert not due and next_s == pytest.approx(29.8)


def test_a_beat_down_for_several_slots_runs_once_then_keeps_the_grid() -> None:
    now = [T0 + 300.5]
    s = _clock(now)
    assert s.is_due(_at(T0 + 6))[0]
    due, next_s = s.is_due(_at(T0 + 300.5))
    assert not due and next_s == pytest.approx(5.5)  # T0 + 306


def test_a_beat_entry_with_it_runs_on_the_grid_and_survives_pickling() -> None:
    now = [T0 + 10]
    app = Celery(set_as_current=False)
    entry = ScheduleEntry(name="e", task="t", schedule=_clock(now), app=app, last_run_at=_at(T0 + 6))
    assert not entry.is_due()[0]
    now[0] = T0 + 36.01
    assert entry.is_due()[0]
    entry = next(entry)  # what beat does after sending it (last_run_at = now)
    assert not entry.is_due()[0]
    copy = pickle.loads(pickle.dumps(Aligned(60, 21)))  # the persistent scheduler shelves schedules
    assert copy == Aligned(60, 21) and copy != Aligned(60, 20) and copy.next_after(0) == 21


def test_an_offset_outside_the_period_is_refused() -> None:
    with pytest.raises(ValueError, match="offset_s"):
        Aligned(30, 30)
