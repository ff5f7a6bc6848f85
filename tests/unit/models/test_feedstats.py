"""models.feedstats: which stats are a running feed's, and what in them is a problem (for `bookfeed status` and the
API's /v1/health alike)."""

from __future__ import annotations

import pytest

from models.feedstats import FEED_ALIVE_S, feed_problems, live_stats, stats_pattern

pytestmark = pytest.mark.unit


def test_only_stats_written_lately_are_a_running_feed_s() -> None:
    now = 1_000.0
    stats = [{"ts": now}, {"ts": now - FEED_ALIVE_S}, {"ts": now - FEED_ALIVE_S - 0.1}, {}, {"ts": None}]
    assert live_stats(stats, now) == stats[:2]


def test_problems_name_the_feed_and_what_is_wrong() -> None:
    assert feed_problems([]) == ["no feed reports (is `bookfeed feed` running?)"]
    assert feed_problems([{"feed_id": "abcdef123", "connected": True}]) == []
    got = feed_problems(
        [
            {"feed_id": "abcdef123", "connected": False, "source_error": "exchangeInfo: HTTP 451"},
            {"feed_id": "012345xyz", "buffered_frames": 9000, "paused_high_water": True},
            {"feed_id": "nobuffer", "buffered_frames": 0, "paused_high_water": True},
        ]
    )
    assert got == [
        "feed abcdef has no live connection",
        "feed abcdef: exchangeInfo: HTTP 451",
        "feed 012345 holds 9000 frames: Redis above its high-water mark",
    ]


def test_the_stats_keys_sit_under_the_deployment_s_prefix() -> None:
    assert stats_pattern() == "bookfeed:feed:stats:*"
    assert stats_pattern("deploy-1:") == "deploy-1:bookfeed:feed:stats:*"
