"""feed.broker without a broker: the high-water check (the Celery sender is covered by tests/integration)."""

from __future__ import annotations

import logging

import pytest

from feed.broker import HighWater
from feed.outage import PublisherStats
from tests.unit.feed._fakes import FakeBroker

pytestmark = pytest.mark.unit


def _check(broker: FakeBroker, mark: float = 0.8) -> tuple[HighWater, PublisherStats]:
    stats = PublisherStats()
    return HighWater(broker.memory, mark=mark, clock=broker.clock, stats=stats), stats


def test_a_failing_high_water_check_warns_once_per_run_of_failures(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker(used=100)
    check, stats = _check(broker)
    for error in (PermissionError("NOPERM this user has no permissions to run the 'info' command"),) * 3 + (
        None,
        ConnectionError("gone"),
        ConnectionError("gone"),
    ):
        broker.error = error
        broker.now += 1.0
        assert check.above(lambda: 0) is False
    assert broker.checks == 6 and stats.high_water_check_failures == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "high-water check failed (PermissionError: NOPERM this user has no permissions to run the 'info' command): "
        "publishing unchecked",
        "high-water check works again",
        "high-water check failed (ConnectionError: gone): publishing unchecked",
    ]


def test_the_broker_is_asked_once_a_second_or_after_a_mebibyte_published() -> None:
    broker = FakeBroker(used=900)  # 90% of maxmemory
    check, stats = _check(broker)
    assert check.above(lambda: 7) is True and (broker.checks, stats.high_water_pauses) == (1, 1)
    broker.used = 100
    broker.now += 0.5
    assert check.above(lambda: 7) is True and broker.checks == 1  # the last answer holds within the second
    check.published(1 << 20)
    assert check.above(lambda: 7) is False and broker.checks == 2  # a MiB published: asked again
    assert not stats.paused_high_water and stats.high_water_pauses == 1


def test_no_probe_or_no_maxmemory_is_never_above() -> None:
    assert HighWater(None, mark=0.8, clock=lambda: 0.0, stats=PublisherStats()).above(lambda: 0) is False
    check, stats = _check(FakeBroker(used=10**9, maxmemory=0))
    assert check.above(lambda: 0) is False and stats.high_water_pauses == 0
