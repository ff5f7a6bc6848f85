"""feed.service: the feed is built from Settings itself (no copy of its fields), and the bounded state it writes to
Redis every second."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from feed.batcher import Batcher
from feed.publisher import Publisher
from feed.service import _capped, _changed_last_seen, _final_last_seen, run_feed
from feed.stream import Endpoint, StreamClient
from models.errors import ConfigError
from models.settings import ReconnectPolicy, Settings

pytestmark = pytest.mark.unit

# Every value differs from its default, so a part that ignores the settings shows.
CUSTOM = Settings(
    _env_file=None,  # type: ignore[call-arg]
    url="wss://h:9443",
    symbols=("solusdt", "XRPUSDT"),
    depth=5,
    speed="100ms",
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
    streams_per_connection=50,
    connects_per_5m=20,
)


def test_custom_settings_differ_from_every_default_the_feed_reads() -> None:
    names = ("batch_max_frames", "buffer_max_bytes", "max_frame_bytes", "broker_high_water", "stall_timeout_s")
    for name in (*names, "streams_per_connection", "connects_per_5m"):
        assert getattr(CUSTOM, name) != Settings.model_fields[name].default, name


def test_stream_client_takes_endpoint_policy_cap_and_limits_from_settings() -> None:
    client = StreamClient.from_settings(CUSTOM, on_frame=lambda ns, raw: None)
    assert client.endpoint == Endpoint("wss://h:9443/stream", None)  # subscribed by message
    assert client.policy == client.pool.policy == CUSTOM.reconnect_policy != ReconnectPolicy.default()
    assert client.tracker._stall_ns == 2 * 10**9
    pool = client.pool
    assert (pool._max_frame_bytes, pool._per_conn, pool.bucket.capacity) == (8_192, 50, 20)


def test_stream_client_defaults_are_the_settings_defaults() -> None:
    client = StreamClient("ws://h:1/stream?streams=btcusdt@depth20", on_frame=lambda ns, raw: None)
    defaults = Settings.model_construct()
    assert client.policy == defaults.reconnect_policy
    pool = client.pool
    assert (pool._max_frame_bytes, pool._per_conn, pool.bucket.capacity) == (
        defaults.max_frame_bytes,
        defaults.streams_per_connection,
        defaults.connects_per_5m,
    )


def test_publisher_and_batcher_take_their_limits_from_settings() -> None:
    pub = Publisher.from_settings(CUSTOM, lambda p: None)
    assert (pub._max, pub._max_bytes, pub._high_water.mark) == (5_000, 2 * 1024 * 1024, 0.5)
    batcher = Batcher.from_settings(CUSTOM, emit=lambda frames: None, clock_ns=lambda: 0)
    assert (batcher._max_frames, batcher._max_wait_ns) == (7, 9_000_000)


def test_run_feed_requires_redis_url() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        run_feed(CUSTOM.model_copy(update={"redis_url": None}), stop=threading.Event(), install_signals=False)


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


def test_last_seen_left_for_the_next_feed_is_the_stop_time_or_the_earliest_unpublished_frame() -> None:
    stopped = {"a": 100, "b": 100}
    unpublished = {"b": 40, "junk": 1}  # a stream not subscribed gets nothing
    assert _final_last_seen(("a", "b", "c"), stopped, unpublished) == {"a": 100, "b": 40}


def test_run_feed_closes_its_redis_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender's and the live-stats clients are closed when run_feed returns (nothing listens on port 1: every
    call fails fast)."""
    made: list[redis.Redis] = []
    closed: list[redis.Redis] = []
    from_url, close = redis.Redis.from_url, redis.Redis.close

    def recording_from_url(url: str, **kwargs: Any) -> redis.Redis:
        client = from_url(url, **kwargs)
        made.append(client)
        return client

    def recording_close(self: redis.Redis) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(redis.Redis, "from_url", recording_from_url)
    monkeypatch.setattr(redis.Redis, "close", recording_close)
    settings = CUSTOM.model_copy(update={"url": "ws://127.0.0.1:1", "redis_url": "redis://127.0.0.1:1/0"})
    run_feed(settings, duration_s=0.2, send=lambda p: None, install_signals=False)
    assert len(made) == 2 and sorted(map(id, closed)) == sorted(map(id, made))
