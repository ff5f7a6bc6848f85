"""The feed's websocket side as one object: which endpoint and streams a URL means, and StreamClient, which runs
the shared per-stream tracker (feed/tracker.py) and the pool of connections (feed/pool.py, feed/connection.py)
until stopped. Frames go out raw, their receive time stamped first; nothing here parses a book."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from feed.pool import ConnectionPool
from feed.tracker import OTHER_STREAMS, Frame, StreamTracker, TrackerStats
from models.errors import ConfigError
from models.settings import ReconnectPolicy, Settings
from models.vocabulary import MAX_FRAME_BYTES

__all__ = ["OTHER_STREAMS", "Endpoint", "StreamClient", "parse_endpoint"]

_TICK_S = 0.25  # how often the pool's rotations and alarms are looked after


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What the feed connects to: `url`, and the streams that URL names (None: a bare endpoint, the streams are
    subscribed by message)."""

    url: str
    streams: tuple[str, ...] | None


def parse_endpoint(url: str) -> Endpoint:
    """A combined-stream URL (`/stream?streams=a/b`) is kept with its streams; `/ws/<stream>` becomes its combined
    form; a bare endpoint (`wss://host:port`, `.../ws`, `.../stream`) becomes `<base>/stream`, subscribed by
    message. Raises ConfigError for a URL that is not ws(s)://host... or names an empty stream list."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"not a websocket URL: {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/stream"):
        query = parse_qs(parts.query, keep_blank_values=True)
        if "streams" in query:
            streams = tuple(dict.fromkeys(s for v in query["streams"] for s in v.split("/") if s))
            if not streams:
                raise ConfigError(f"{url!r} has an empty ?streams=")
            return Endpoint(url, streams)
        return Endpoint(urlunsplit((parts.scheme, parts.netloc, path, "", "")), None)
    if "/ws/" in path + "/" and path.rsplit("/ws", 1)[1].strip("/"):
        base, stream = path.rsplit("/ws/", 1)
        return Endpoint(urlunsplit((parts.scheme, parts.netloc, f"{base}/stream", f"streams={stream}", "")), (stream,))
    base = path[: -len("/ws")] if path.endswith("/ws") else path
    return Endpoint(urlunsplit((parts.scheme, parts.netloc, f"{base}/stream", "", "")), None)


class StreamClient:
    """Reads the feed's streams over as many connections as needed until stopped, passing frames to `on_frames` in
    lists (those a connection read at once), or else one by one to `on_frame`.

    At a bare endpoint the streams are those of `set_streams` (call it again to change them); a URL naming its
    streams is read as it is, on one connection. Duplicates, gaps and rejections: see feed.tracker.StreamTracker
    (`on_gap`, `on_reject`, `last_seen`); connections, their rate and rotation: see feed.pool.ConnectionPool.
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        on_frame: Callable[[int, str], None] | None = None,
        on_frames: Callable[[list[Frame]], None] | None = None,
        on_gap: Callable[[str, int, int, str], None] | None = None,
        on_reject: Callable[[int, str, str], None] | None = None,
        last_seen: dict[str, int] | None = None,
        policy: ReconnectPolicy | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        streams_per_connection: int = 200,
        connects_per_5m: int = 100,
        clock_ns: Callable[[], int] = time.time_ns,
        **pool_options: float,
    ) -> None:
        self.endpoint = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
        self.policy = policy = policy or ReconnectPolicy.default()
        self.tracker = StreamTracker(
            on_frame=on_frame,
            on_frames=on_frames,
            on_gap=on_gap,
            on_reject=on_reject,
            last_seen=last_seen,
            stall_timeout_s=policy.stall_timeout_s,
            clock_ns=clock_ns,
        )
        self.pool = ConnectionPool(
            url=self.endpoint.url,
            subscribe=self.endpoint.streams is None,
            tracker=self.tracker,
            policy=policy,
            max_frame_bytes=max_frame_bytes,
            streams_per_connection=streams_per_connection,
            connects_per_5m=connects_per_5m,
            **pool_options,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        on_frame: Callable[[int, str], None] | None = None,
        on_frames: Callable[[list[Frame]], None] | None = None,
        on_gap: Callable[[str, int, int, str], None] | None = None,
        on_reject: Callable[[int, str, str], None] | None = None,
        last_seen: dict[str, int] | None = None,
    ) -> StreamClient:
        """The client of the feed `settings` describe: endpoint (see parse_endpoint), reconnect policy, message
        cap, streams per connection and connection rate."""
        return cls(
            settings.url,
            on_frame=on_frame,
            on_frames=on_frames,
            on_gap=on_gap,
            on_reject=on_reject,
            last_seen=last_seen,
            policy=settings.reconnect_policy,
            max_frame_bytes=settings.max_frame_bytes,
            streams_per_connection=settings.streams_per_connection,
            connects_per_5m=settings.connects_per_5m,
        )

    @property
    def fixed(self) -> bool:
        """True when the URL names the streams (no stream-list changes)."""
        return self.endpoint.streams is not None

    @property
    def streams(self) -> frozenset[str]:
        return self.tracker.streams

    @property
    def stats(self) -> TrackerStats:
        return self.tracker.stats

    @property
    def last_seen(self) -> dict[str, int]:
        return self.tracker.last_seen

    @property
    def stopped(self) -> dict[str, int]:
        return self.tracker.stopped

    def set_streams(self, streams: Iterable[str]) -> tuple[list[str], list[str]]:
        """Subscribe exactly `streams` (bare endpoint only); returns (added, removed)."""
        if self.fixed:
            raise ConfigError("the feed URL names its streams; they cannot be changed")
        return self.pool.set_streams(streams)

    def check_stalls(self) -> None:
        self.tracker.check_stalls()

    def run(self, stop: threading.Event) -> None:
        """Read until `stop` is set, then close every connection and report "feed stopped" gaps. Raises
        RetriesExhaustedError when a connection spent `policy.max_reconnect_attempts` failed connects in a row."""
        if self.endpoint.streams is not None:
            self.pool.set_streams(self.endpoint.streams)
        try:
            while not stop.wait(_TICK_S):
                self.pool.tick()
        finally:
            self.pool.close()
            self.tracker.stop()

    def snapshot(self) -> dict[str, Any]:
        """The connection side of the feed's stats: connected (any connection live), reconnects, connections
        (id, state, streams, last_error, since, frames each), streams_subscribed, and source_error (why the symbol
        list could not be read, or None)."""
        return {
            "connected": self.pool.connected(),
            "reconnects": self.pool.reconnects(),
            "connections": [asdict(s) for s in self.pool.statuses()],
            "streams_subscribed": self.pool.subscribed(),
            "source_error": self.pool.source_error,
        }
