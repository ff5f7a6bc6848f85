"""A beat schedule on the clock: every `period_s` seconds at `offset_s` past each UTC multiple of the period.

Celery's float schedules run every period counted from beat's start, so the 30 s and 1 min averages ran at the same
instant every minute (two worker processes scanning books at once) and a window was computed up to a period after it
closed. Aligned, each run comes just after the windows it computes close, and runs of different sizes are spread.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import schedstate, schedule

__all__ = ["Aligned"]


class Aligned(schedule):  # type: ignore[misc]  # celery ships no type information
    """Due at every `offset_s` past a UTC multiple of `period_s` (0 <= offset_s < period_s); a run missed while beat
    was down is run once, at once, then the grid resumes."""

    def __init__(self, period_s: float, offset_s: float = 0.0, **kw: Any) -> None:
        if not 0 <= offset_s < period_s:
            raise ValueError(f"offset_s must be in [0, {period_s}), not {offset_s}")
        super().__init__(run_every=timedelta(seconds=period_s), **kw)
        self.period_s, self.offset_s = float(period_s), float(offset_s)

    def next_after(self, t: float) -> float:
        """The first due instant strictly after `t` (epoch seconds)."""
        return (math.floor((t - self.offset_s) / self.period_s) + 1) * self.period_s + self.offset_s

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        due = self.next_after(self.maybe_make_aware(last_run_at).timestamp())
        return timedelta(seconds=due - self._now_s())

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining_s = self.remaining_estimate(last_run_at).total_seconds()
        if remaining_s > 0:
            return schedstate(is_due=False, next=remaining_s)
        now_s = self._now_s()
        return schedstate(is_due=True, next=self.next_after(now_s) - now_s)

    def _now_s(self) -> float:
        now: datetime = self.maybe_make_aware(self.now())
        return now.astimezone(UTC).timestamp()

    def __reduce__(self) -> tuple[type, tuple[float, float]]:
        return self.__class__, (self.period_s, self.offset_s)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Aligned):
            return (self.period_s, self.offset_s) == (other.period_s, other.offset_s)
        return False

    def __hash__(self) -> int:
        return hash((self.period_s, self.offset_s))

    def __repr__(self) -> str:
        return f"<aligned: every {self.period_s:g} s at +{self.offset_s:g} s>"
