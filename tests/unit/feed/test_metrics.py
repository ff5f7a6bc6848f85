"""feed.metrics: what the feed's /metrics says, read from the tracker, the pool and the publisher (no socket: the
client is never run), and the kinds a reconnect reason is counted under."""

from __future__ import annotations

import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from feed.connection import RECONNECT_KINDS, reconnect_kind
from feed.metrics import DROP_REASONS, FeedMetrics
from feed.stream import StreamClient
from tests.unit.feed._fakes import FakeSender, book, drain, make_publisher

pytestmark = pytest.mark.unit

BTC, ETH = "btcusdt@depth20@100ms", "ethusdt@depth20@100ms"


def _samples(metrics: FeedMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_counts_frames_drops_ages_buffer_and_publish_time() -> None:
    now = time.time_ns()
    client = StreamClient(f"ws://127.0.0.1:9/stream?streams={BTC}/{ETH}", on_frame=lambda *_: None)
    client.tracker.track([BTC, ETH])
    sender = FakeSender()
    metrics = FeedMetrics()
    publisher = make_publisher(metrics.timed(sender))
    metrics.watch(client, publisher, lambda: 7)
    client.tracker.handle(now - 5_000_000_000, book(BTC, 10))
    client.tracker.handle(now - 4_000_000_000, book(BTC, 10))  # the same id again: duplicate
    client.tracker.handle(now - 3_000_000_000, book(BTC, 9))  # an older id: stale
    client.tracker.handle(now - 2_000_000_000, book(ETH, 1))
    publisher.enqueue([(now, book(ETH, 2))] * 3)

    s = _samples(metrics)
    assert s[("bookfeed_frames_received_total", (("stream", BTC),))] == 1
    assert s[("bookfeed_frames_received_total", (("stream", ETH),))] == 1
    assert s[("bookfeed_frames_dropped_total", (("reason", "duplicate"),))] == 1
    assert s[("bookfeed_frames_dropped_total", (("reason", "stale"),))] == 1
    assert {r for (n, lab), _ in s.items() if n == "bookfeed_frames_dropped_total" for _, r in lab} == set(DROP_REASONS)
    assert 3.5 < s[("bookfeed_last_frame_age_seconds", (("stream", BTC),))] < 60  # from the last forwarded frame
    assert s[("bookfeed_outage_buffer_frames", ())] == 3
    assert s[("bookfeed_outage_buffer_bytes", ())] > 0
    assert s[("bookfeed_connections_open", ())] == 0
    assert s[("bookfeed_feed_gaps_total", ())] == 7
    assert {lab[0][1] for (n, lab) in s if n == "bookfeed_reconnects_total"} == set(RECONNECT_KINDS)

    drain(publisher)
    s = _samples(metrics)
    assert s[("bookfeed_publish_seconds_count", ())] == 1
    assert s[("bookfeed_published_frames_total", ())] == 3
    assert s[("bookfeed_outage_buffer_frames", ())] == 0


def test_two_feeds_in_one_process_have_their_own_registries() -> None:
    assert FeedMetrics().registry is not FeedMetrics().registry  # no "Duplicated timeseries" on the second run


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("no complete message for 31s", "silent"),
        ("server closed the connection", "server_closed"),
        ("SUBSCRIBE refused: {'code': 2}", "control_error"),
        ("LIST_SUBSCRIPTIONS got no reply within 10s", "control_error"),
        ("subscriptions still differ after 3 LIST_SUBSCRIPTIONS checks", "control_error"),
        ("WebSocketConnectionClosedException: socket is already closed.", "socket_error"),
        ("ConnectionResetError: [Errno 104] Connection reset by peer", "socket_error"),
        ("stopped", "other"),
    ],
)
def test_reconnect_reasons_fall_into_a_few_kinds(reason: str, kind: str) -> None:
    assert reconnect_kind(reason) == kind
    assert kind in RECONNECT_KINDS


def test_failed_connects_are_counted_and_the_connection_shows_in_backoff() -> None:
    import threading

    from stack.harness import free_port
    from tests.services import wait_for

    client = StreamClient(f"ws://127.0.0.1:{free_port()}/stream?streams={BTC}", on_frame=lambda *_: None)
    metrics = FeedMetrics()
    metrics.watch(client, make_publisher(FakeSender()), lambda: 0)
    stop = threading.Event()
    reader = threading.Thread(target=client.run, args=(stop,))
    reader.start()
    try:
        wait_for(lambda: client.pool.reconnect_kinds().get("connect_failed", 0) >= 1, what="a refused connect")
        wait_for(lambda: _samples(metrics).get(("bookfeed_connections", (("state", "backoff"),))) == 1, what="backoff")
    finally:
        stop.set()
        reader.join(10)
    s = _samples(metrics)
    assert s[("bookfeed_reconnects_total", (("reason", "connect_failed"),))] >= 1
    assert s[("bookfeed_connections_open", ())] == 0
