"""feed.service: the feed's config slice of Settings, and the bounded state it writes to Redis every second."""

from __future__ import annotations

import dataclasses

import pytest

from feed.service import FeedConfig, _capped, _changed_last_seen
from models.settings import Settings

pytestmark = pytest.mark.unit

# FeedConfig field -> Settings field, where the names differ
_RENAMED = {"key_prefix": "broker_key_prefix"}


def test_feed_config_defaults_are_the_settings_defaults() -> None:
    cfg = FeedConfig(url="ws://x/stream?streams=a", redis_url="redis://r")
    shared = [
        f.name
        for f in dataclasses.fields(FeedConfig)
        if f.name not in ("url", "redis_url") and _RENAMED.get(f.name, f.name) in Settings.model_fields
    ]
    assert {"buffer_max_bytes", "max_frame_bytes", "broker_high_water", "buffer_max_frames"} <= set(shared)
    for name in shared:
        assert getattr(cfg, name) == Settings.model_fields[_RENAMED.get(name, name)].default, name


def test_feed_config_from_settings_takes_every_shared_field() -> None:
    s = Settings(
        redis_url="redis://h:1/2",
        batch_max_frames=7,
        batch_max_wait_ms=9,
        buffer_max_frames=5_000,
        buffer_max_bytes=2 * 1024 * 1024,
        max_frame_bytes=8_192,
        broker_high_water=0.5,
        silence_timeout_s=3.0,
        stall_timeout_s=2.0,
        max_connection_age_s=60.0,
        max_reconnect_attempts=4,
        broker_key_prefix="p:",
        ledger_path="/tmp/l",
    )
    cfg = FeedConfig.from_settings(s, url="ws://u", duration_s=5.0)
    assert (cfg.url, cfg.redis_url, cfg.duration_s) == ("ws://u", "redis://h:1/2", 5.0)
    for f in dataclasses.fields(FeedConfig):
        name = _RENAMED.get(f.name, f.name)
        if name in Settings.model_fields and name not in ("url", "redis_url"):
            assert getattr(cfg, f.name) == getattr(s, name), f.name


def test_stats_copy_of_per_stream_counts_is_capped() -> None:
    counts = {f"s{i}": i for i in range(5_000)}
    assert _capped(counts, 1_024) == {f"s{i}": i for i in range(1_024)}
    small = {"a": 1}
    copy = _capped(small, 1_024)
    assert copy == small and copy is not small


def test_last_seen_writes_only_changed_subscribed_streams() -> None:
    written: dict[str, int] = {}
    last_seen = {"a": 1, "b": 2, "junk": 3}
    assert _changed_last_seen(("a", "b"), last_seen, written) == {"a": 1, "b": 2}
    written.update(a=1, b=2)
    last_seen["b"] = 5
    assert _changed_last_seen(("a", "b"), last_seen, written) == {"b": 5}
    written["b"] = 5
    assert _changed_last_seen(("a", "b", "c"), last_seen, written) == {}
