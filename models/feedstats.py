"""The feeds' stats in Redis, the contract between the feed that writes them (feed.service) and those who read them
(`bookfeed status`, `bookfeed up`'s live view, the API's /v1/health): where they are, when one counts as a live feed's,
and what in them is a problem. Pure: the readers do the I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["FEED_ALIVE_S", "STATS_PREFIX", "feed_problems", "live_stats", "stats_pattern"]

STATS_PREFIX = "bookfeed:feed:stats:"  # + feed id: the feed's latest stats, JSON, rewritten every second
FEED_ALIVE_S = 5.0  # a feed writes its stats every second: older ones are a stopped feed's last

_Stats = TypeVar("_Stats", bound=Mapping[str, Any])


def stats_pattern(key_prefix: str = "") -> str:
    """The SCAN pattern of every feed's stats key under a deployment's broker key prefix."""
    return key_prefix + STATS_PREFIX + "*"


def live_stats(stats: Iterable[_Stats], now: float) -> list[_Stats]:
    """The stats written in the last FEED_ALIVE_S seconds before `now` (epoch seconds): one per running feed."""
    return [s for s in stats if now - float(s.get("ts", 0) or 0) <= FEED_ALIVE_S]


def feed_problems(stats: Iterable[Mapping[str, Any]]) -> list[str]:
    """What the live feeds' stats show wrong (each a degraded state): no feed at all, a feed without a connection, a
    feed whose source fails, a feed holding frames while Redis is above its high-water mark."""
    stats = list(stats)
    found = [] if stats else ["no feed reports (is `bookfeed feed` running?)"]
    for s in stats:
        name = str(s.get("feed_id", "?"))[:6]
        if not s.get("connected", True):
            found.append(f"feed {name} has no live connection")
        if s.get("source_error"):
            found.append(f"feed {name}: {s['source_error']}")
        if s.get("buffered_frames", 0) and s.get("paused_high_water"):
            found.append(f"feed {name} holds {s['buffered_frames']} frames: Redis above its high-water mark")
    return found
