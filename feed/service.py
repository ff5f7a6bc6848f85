"""The one home of the feed process's wiring: the stream list (universe.py) -> websocket connections (stream.py,
pool.py, connection.py, tracker.py) -> batcher.py -> outage buffer and publisher thread (outage.py, gaps.py,
publisher.py) -> Redis (broker.py), with live stats and each stream's last-seen time in Redis."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis

from feed.batcher import Batcher, Frame
from feed.broker import make_celery_sender
from feed.ids import peek
from feed.metrics import FeedMetrics
from feed.outage import PendingBatch
from feed.publisher import Publisher
from feed.stream import StreamClient
from feed.universe import SymbolSource, UniverseError
from models.feedstats import STATS_PREFIX, stats_pattern
from models.settings import Settings

__all__ = ["STATS_PREFIX", "read_feed_stats", "run_feed"]

logger = logging.getLogger(__name__)

LAST_SEEN_KEY = "bookfeed:feed:last_seen"  # stream -> ns of its last frame, for the next feed process
_MAX_STATS_STREAMS = 2_048  # per-stream counts copied into the stats snapshot (about 1,500 symbols trade)
_ROUTINE_GAPS = frozenset({"feed started", "feed stopped"})  # logged at DEBUG; feed_gaps has them all
_LIST_RETRY_BASE_S, _LIST_RETRY_CAP_S = 5.0, 300.0  # backoff while the symbol list cannot be read


def run_feed(
    settings: Settings,
    *,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    send: Callable[[PendingBatch], None] | None = None,
    install_signals: bool = True,
) -> dict[str, Any]:
    """Run the feed `settings` describe (REDIS_URL required) until `stop` is set, SIGTERM/SIGINT, or `duration_s`;
    then publish what is buffered and return stats. `send` replaces the Celery sender (tests)."""
    stop = stop or threading.Event()
    feed_id = uuid.uuid4().hex[:12]
    redis_url, key_prefix = settings.require_redis_url(), settings.broker_key_prefix
    sender = make_celery_sender(redis_url, key_prefix=key_prefix)
    metrics = FeedMetrics() if settings.metrics_port else None  # port 0: no /metrics
    send_to = metrics.timed(send or sender) if metrics else send or sender
    # The high-water check asks the sender's Redis even when a test injects `send`: same URL, same options.
    publisher = Publisher.from_settings(settings, send_to, feed_id=feed_id, broker_memory=sender.memory)
    batcher = Batcher.from_settings(settings, emit=publisher.enqueue, clock_ns=time.monotonic_ns)
    gaps = 0
    # Live stats and last-seen times (best effort; the publisher has its own connection for the batches).
    # Closed on the way out: run_feed may be called inside a longer-lived process (tests do).
    with sender, redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as state:
        last_seen_key = key_prefix + LAST_SEEN_KEY

        # Every connection's reader thread calls these: the counter and the ledger file are shared.
        shared_lock = threading.Lock()

        def on_gap(stream: str, start_ns: int, end_ns: int, reason: str) -> None:
            nonlocal gaps
            with shared_lock:
                gaps += 1
            publisher.enqueue_gap((stream, start_ns, end_ns, reason))
            # One per stream at every start and stop: with every symbol subscribed they would bury real warnings.
            level = logging.DEBUG if reason in _ROUTINE_GAPS else logging.WARNING
            logger.log(level, "gap of %.1fs on %s (%s)", (end_ns - start_ns) / 1e9, stream, reason)

        def on_frames(frames: list[Frame]) -> None:
            if ledger is not None:
                lines = "".join(_ledger_line(received_ns, raw) for received_ns, raw in frames)
                with shared_lock:  # a text file's writer is not thread-safe: lines went missing without this
                    ledger.write(lines)
            batcher.add_many(frames)

        client = StreamClient.from_settings(
            settings,
            on_frames=on_frames,
            on_gap=on_gap,
            on_reject=publisher.enqueue_rejected,
            # Where the previous feed process left off: the time until our first frame is a gap.
            last_seen=_load_last_seen(state, last_seen_key),
        )
        metrics_server = None
        if metrics is not None:
            metrics.watch(client, publisher, lambda: gaps)
            metrics_server = metrics.serve(settings.metrics_port)
        # Audit (make chaos): one line per forwarded frame (received_ns, stream, lastUpdateId).
        ledger = open(settings.ledger_path, "a", buffering=1 << 16) if settings.ledger_path else None  # noqa: SIM115
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        reader_done = threading.Event()
        pub_stop = threading.Event()
        pub_thread = threading.Thread(target=publisher.run, args=(pub_stop,), name="publisher", daemon=True)
        pub_thread.start()
        stats_key = key_prefix + STATS_PREFIX + feed_id

        def snapshot() -> dict[str, Any]:
            s, p = client.stats, publisher.stats
            return {
                "feed_id": feed_id,
                "frames": s.frames,
                "duplicates": s.duplicates,
                "per_stream": _capped(s.per_stream, _MAX_STATS_STREAMS),
                **client.snapshot(),
                "published_frames": p.published_frames,
                "buffered_frames": publisher.pending_frames(),
                "buffered_bytes": p.buffered_bytes,
                "dropped_frames": p.dropped_frames,
                "unpublished_frames": p.unpublished_frames,
                "feed_rejected": p.feed_rejected,
                "paused_high_water": p.paused_high_water,
                "gaps": gaps,
                "ts": time.time(),
            }

        written: dict[str, int] = {}  # last_seen as last written to Redis

        def save_state(stats: dict[str, Any], ttl_s: int, last_seen: dict[str, int] | None = None) -> None:
            # Best effort: the publisher reports broker trouble; these only feed `bookfeed up` and the next feed.
            with contextlib.suppress(redis.RedisError):
                state.set(stats_key, json.dumps(stats), ex=ttl_s)
                changed = _changed_last_seen(
                    client.streams, client.last_seen if last_seen is None else last_seen, written
                )
                if changed:
                    state.hset(last_seen_key, mapping={k: str(v) for k, v in changed.items()})
                    written.update(changed)

        def ticker() -> None:
            next_stats = 0.0
            while not reader_done.is_set():
                reader_done.wait(min(0.05, batcher.seconds_until_due()))
                batcher.flush_if_due()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + 1.0
                    client.check_stalls()
                    save_state(snapshot(), 15)

        tick = threading.Thread(target=ticker, name="ticker", daemon=True)
        tick.start()
        if duration_s is not None:
            timer = threading.Timer(duration_s, stop.set)
            timer.daemon = True
            timer.start()
        # What exists now (modules, Celery, Redis clients) lives as long as the feed: kept out of the cyclic garbage
        # collector's full passes, which the frames' containers would otherwise set off every few seconds.
        gc.freeze()
        try:
            if not client.fixed:
                _follow_streams(SymbolSource.from_settings(settings), client, stop)
            client.run(stop)
        finally:
            gc.unfreeze()
            reader_done.set()
            tick.join()
            batcher.flush()
            pub_stop.set()
            pub_thread.join()
            if ledger is not None:
                ledger.close()
            if metrics_server is not None:
                metrics_server.close()
            final = snapshot()
            save_state(final, 60, _final_last_seen(client.streams, client.stopped, publisher.unpublished_since))
            logger.info("feed stopped", extra={k: v for k, v in final.items() if k != "per_stream"})
        return final


def _ledger_line(received_ns: int, raw: str) -> str:
    stream, luid = peek(raw)
    return f"{received_ns}\t{stream or ''}\t{'' if luid is None else luid}\n"


def _follow_streams(source: SymbolSource, client: StreamClient, stop: threading.Event) -> None:
    """Subscribe the source's streams: a fixed list at once, `all` from a thread that reads the list again every
    `source.refresh_s` (retrying with backoff while the exchange's REST endpoint fails; the feed keeps running)."""
    if source.refresh_s is None:
        streams = source.streams()
        if not streams:
            logger.warning("no stream to subscribe: this shard holds none of the symbols")
        client.set_streams(streams)
        return
    refresh_s = source.refresh_s

    def follow() -> None:
        failures = 0
        while not stop.is_set():
            try:
                streams = source.streams()
            except UniverseError as exc:
                failures += 1
                delay = min(_LIST_RETRY_CAP_S, _LIST_RETRY_BASE_S * 2 ** min(failures - 1, 16))
                client.pool.source_error = f"symbol list: {exc}"
                logger.error("could not read the symbol list: %s; retry %d in %.0fs", exc, failures, delay)
                stop.wait(delay)
                continue
            failures, client.pool.source_error = 0, None
            client.set_streams(streams)
            stop.wait(refresh_s)

    threading.Thread(target=follow, name="symbols", daemon=True).start()


def _capped(counts: dict[str, int], cap: int) -> dict[str, int]:
    """A copy of at most `cap` entries of a dict the reader thread may be growing."""
    if len(counts) <= cap:
        return dict(counts)  # one C-level copy: safe against a concurrent insert
    out: dict[str, int] = {}
    with contextlib.suppress(RuntimeError):  # changed size during iteration: keep what was copied
        for k, v in counts.items():
            if len(out) >= cap:
                break
            out[k] = v
    return out


def _changed_last_seen(streams: Iterable[str], last_seen: dict[str, int], written: dict[str, int]) -> dict[str, int]:
    """Last-seen times of subscribed streams that differ from what was last written."""
    changed = {}
    for stream in streams:
        ns = last_seen.get(stream)
        if ns is not None and written.get(stream) != ns:
            changed[stream] = ns
    return changed


def _final_last_seen(
    streams: Iterable[str], stopped: dict[str, int], unpublished_since: dict[str, int]
) -> dict[str, int]:
    """What the next feed process should take as each subscribed stream's last frame: the time this one stopped
    (its "feed stopped" gap covers the span before), or, where frames were never published, the earliest of them."""
    out = {}
    for stream in streams:
        times = [t for t in (stopped.get(stream), unpublished_since.get(stream)) if t is not None]
        if times:
            out[stream] = min(times)
    return out


def _load_last_seen(client: redis.Redis, key: str) -> dict[str, int]:
    try:
        raw = client.hgetall(key)
    except redis.RedisError as exc:
        logger.warning("could not read where the previous feed stopped (%s); no restart gap recorded", exc)
        return {}
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def read_feed_stats(client: redis.Redis, key_prefix: str = "") -> list[dict[str, Any]]:
    """Every live feed's latest stats (as written by run_feed)."""
    out = []
    for key in client.scan_iter(stats_pattern(key_prefix), count=1000):
        raw = client.get(key)
        if raw:
            out.append(json.loads(raw))
    return out
