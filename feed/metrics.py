"""The feed's Prometheus metrics (`/metrics` on BOOKFEED_METRICS_PORT): read at scrape time from the stats the feed
keeps anyway (tracker, pool, publisher), plus the publish-latency histogram. One registry per run_feed, so a process
may run the feed twice (tests do); nothing here touches the frames."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from feed.connection import RECONNECT_KINDS, State
from feed.publisher import Publisher
from feed.stream import StreamClient

__all__ = ["DROP_REASONS", "FeedMetrics", "MetricsServer"]

logger = logging.getLogger(__name__)

DROP_REASONS = ("duplicate", "stale", "buffer_overflow", "too_large")
# Publishing one batch to Redis: well under a millisecond when healthy, seconds while Redis is slow.
_PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class MetricsServer:
    """A running /metrics endpoint; `port` is the one bound (useful when 0 asked for a free one)."""

    port: int
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _FeedCollector(Collector):
    """Everything but the histogram, read from the feed's own counters at each scrape."""

    def __init__(self, client: StreamClient, publisher: Publisher, gaps: Callable[[], int]) -> None:
        self._client, self._publisher, self._gaps = client, publisher, gaps

    def collect(self) -> Iterator[Metric]:
        stats, pub = self._client.stats, self._publisher.stats
        received = CounterMetricFamily(
            "bookfeed_frames_received",
            "Frames received and forwarded, per stream ('?': not subscribed)",
            labels=["stream"],
        )
        for stream, n in list(stats.per_stream.items()):
            received.add_metric([stream], n)
        yield received
        dropped = CounterMetricFamily(
            "bookfeed_frames_dropped", "Frames the feed did not forward, by reason", labels=["reason"]
        )
        stale = stats.stale
        for reason, n in zip(
            DROP_REASONS, (stats.duplicates - stale, stale, pub.dropped_frames, stats.rejected), strict=True
        ):
            dropped.add_metric([reason], n)
        yield dropped
        now_ns = time.time_ns()
        age = GaugeMetricFamily(
            "bookfeed_last_frame_age_seconds",
            "Seconds since the last frame of each subscribed stream",
            labels=["stream"],
        )
        for stream, seen in list(self._client.last_seen.items()):
            age.add_metric([stream], max(0.0, (now_ns - seen) / 1e9))
        yield age
        states = [s.state for s in self._client.pool.statuses()]
        yield GaugeMetricFamily(
            "bookfeed_connections_open",
            "Websocket connections live (rotating ones included)",
            value=sum(s in (State.LIVE, State.ROTATING) for s in states),
        )
        by_state = GaugeMetricFamily("bookfeed_connections", "Websocket connections by state", labels=["state"])
        for state in State:
            by_state.add_metric([str(state)], sum(s == state for s in states))
        yield by_state
        reconnects = CounterMetricFamily(
            "bookfeed_reconnects", "Reconnects and failed connects, by kind", labels=["reason"]
        )
        kinds = self._client.pool.reconnect_kinds()
        for kind in RECONNECT_KINDS:
            reconnects.add_metric([kind], kinds.get(kind, 0))
        yield reconnects
        yield GaugeMetricFamily(
            "bookfeed_streams_subscribed", "Streams subscribed now", value=self._client.pool.subscribed()
        )
        yield GaugeMetricFamily(
            "bookfeed_outage_buffer_frames",
            "Frames waiting in the feed to be published",
            value=self._publisher.pending_frames(),
        )
        yield GaugeMetricFamily(
            "bookfeed_outage_buffer_bytes", "Bytes of frame text waiting in the feed", value=pub.buffered_bytes
        )
        yield CounterMetricFamily("bookfeed_published_frames", "Frames published to Redis", value=pub.published_frames)
        yield CounterMetricFamily("bookfeed_publish_failures", "Failed publish attempts", value=pub.send_failures)
        yield GaugeMetricFamily(
            "bookfeed_broker_paused",
            "1 while frames are held because Redis is above its high-water mark",
            value=1.0 if pub.paused_high_water else 0.0,
        )
        yield CounterMetricFamily(
            "bookfeed_feed_gaps", "Gaps recorded (reconnects, stalls, resets...)", value=self._gaps()
        )


class FeedMetrics:
    """The feed's registry: `bookfeed_publish_seconds`, the time one batch takes to hand to Redis (wrap the sender
    with `timed`), and, once `watch` is called, everything the feed counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.publish_seconds = Histogram(
            "bookfeed_publish_seconds",
            "Seconds to publish one batch to Redis (successful sends)",
            buckets=_PUBLISH_BUCKETS,
            registry=self.registry,
        )

    def watch(self, client: StreamClient, publisher: Publisher, gaps: Callable[[], int]) -> None:
        """Export the counters of `client` (streams, connections), `publisher` (buffer, publishing) and `gaps()`."""
        self.registry.register(_FeedCollector(client, publisher, gaps))

    def timed(self, send: Callable[[Any], None]) -> Callable[[Any], None]:
        """`send`, observing the duration of each call that returns."""

        def timed_send(batch: Any) -> None:
            t0 = time.perf_counter()
            send(batch)
            self.publish_seconds.observe(time.perf_counter() - t0)

        return timed_send

    def serve(self, port: int, addr: str = "0.0.0.0") -> MetricsServer | None:
        """Serve /metrics on `port` from a daemon thread. None, with a WARNING logged, when the port cannot be
        bound: the feed goes on without its metrics rather than not recording at all."""
        try:
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            logger.warning("cannot serve metrics on port %d: %s; the feed runs without /metrics", port, exc)
            return None
        bound = int(server.server_address[1])
        logger.info("metrics on http://%s:%d/metrics", addr, bound)
        return MetricsServer(bound, server, thread)
