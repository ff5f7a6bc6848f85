"""The one home of the feed's set of connections: streams split across connections of bounded size, connects
within a rate (a token bucket), stream-list changes, make-before-break rotation, and the alarm when nothing is
subscribed. Sockets are feed/connection.py's; per-stream state is feed/tracker.py's."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from feed.connection import Connection, ConnectionStatus, State
from feed.tracker import StreamTracker
from models.settings import ReconnectPolicy

__all__ = ["ConnectionPool", "TokenBucket"]

logger = logging.getLogger(__name__)

_ROTATION_TIMEOUT_S = 60.0  # a replacement that has not delivered by then: switch anyway, with gaps
_NOTHING_ALARM_S = 60.0  # nothing subscribed this long: an ERROR, repeated as often
_LOGGED_NAMES = 10  # stream names shown when the list changes


class TokenBucket:
    """`capacity` tokens, refilled evenly over `period_s` seconds; starts full. Thread-safe."""

    def __init__(self, capacity: int, period_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self._rate = capacity / period_s
        self._clock = clock
        self._tokens = float(capacity)
        self._at = clock()
        self._lock = threading.Lock()

    def try_take(self) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is due (nothing taken)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.capacity), self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self._rate


class ConnectionPool:
    """The connections carrying the feed's streams, at most `streams_per_connection` each, opened (and reopened)
    at most `connects_per_5m` times per 5 minutes. `subscribe=False` means `url` names its streams itself: one
    connection, no stream-list changes. Call `tick` now and then (rotations, retries exhausted, the alarm), from
    one thread; `set_streams` and the accessors may be called from any.

    Rotation is make-before-break: a connection wanting replacement (serverShutdown, or its age limit) is shown as
    rotating while a replacement for its streams connects; once the replacement is live and has delivered a frame
    (or after `rotation_timeout_s`), the old one is closed. Frames both deliver meanwhile are dropped as duplicates
    by the tracker; streams the replacement had not subscribed by then get a gap, the others none.
    """

    def __init__(
        self,
        *,
        url: str,
        subscribe: bool,
        tracker: StreamTracker,
        policy: ReconnectPolicy,
        max_frame_bytes: int,
        streams_per_connection: int = 200,
        connects_per_5m: int = 100,
        rotation_timeout_s: float = _ROTATION_TIMEOUT_S,
        nothing_alarm_s: float = _NOTHING_ALARM_S,
    ) -> None:
        self.url = url
        self.subscribe = subscribe
        self.tracker = tracker
        self.policy = policy
        self._max_frame_bytes = max_frame_bytes
        self._per_conn = streams_per_connection
        self.bucket = TokenBucket(connects_per_5m)
        self._rotation_timeout_s = rotation_timeout_s
        self._nothing_alarm_s = nothing_alarm_s
        self._lock = threading.Lock()
        self._conns: list[Connection] = []
        self._rotations: dict[Connection, tuple[Connection, float]] = {}  # replacement -> (old one, started)
        self._wanted: dict[str, None] = {}  # the streams wanted, in order
        self._next_id = 1
        self._reconnects_gone = 0  # reconnects of connections no longer in the pool
        self._kinds_gone: Counter[str] = Counter()  # ...and their reconnect_kinds
        self._subscribed_at = time.monotonic()
        self._alarmed_at = 0.0
        self.source_error: str | None = None  # why the stream list could not be read (run_feed sets it)
        self._closed = False

    # --- what the connections ask ----------------------------------------------------------------------------------

    def admit(self, conn: Connection, closing: threading.Event) -> bool:
        """Wait for a token of the connection rate (reconnects count too); False when `closing` was set first."""
        waited = False
        while not closing.is_set():
            wait_s = self.bucket.try_take()
            if wait_s == 0.0:
                return True
            if not waited:
                waited = True
                conn.last_error = f"waiting for a connect slot ({self.bucket.capacity} per 5 min): {wait_s:.0f} s"
                logger.info("%s: %s", conn.label(), conn.last_error)
            closing.wait(min(wait_s, 1.0))
        return False

    def lost(self, conn: Connection, reason: str) -> None:
        """Gaps for the lost connection's streams that no other connection has subscribed."""
        with self._lock:
            covered = frozenset().union(*(c.confirmed for c in self._conns if c is not conn))
        self.tracker.interrupt(conn.streams - covered, reason)

    # --- what the feed asks ----------------------------------------------------------------------------------------

    def set_streams(self, streams: Iterable[str]) -> tuple[list[str], list[str]]:
        """Carry exactly `streams` from now on: new ones are added to connections with room, then to new
        connections; removed ones are unsubscribed. Returns (added, removed); both are logged."""
        wanted = dict.fromkeys(streams)
        with self._lock:
            added = [s for s in wanted if s not in self._wanted]
            removed = [s for s in self._wanted if s not in wanted]
            self._wanted = wanted
            if removed:
                gone = frozenset(removed)
                for conn in self._conns:
                    if conn.streams & gone:
                        conn.remove(conn.streams & gone)
                self.tracker.untrack(removed)
            if added:
                self.tracker.track(added)
                self._place(added)
            for conn in [c for c in self._conns if not c.streams and not c.retiring]:
                conn.close()
                self._conns.remove(conn)
                self._reconnects_gone += conn.reconnects
                self._kinds_gone.update(conn.reconnect_kinds)
                logger.info("connection %s closed: no streams left", conn.id)
        _log_change("subscribing", added)
        _log_change("unsubscribing", removed)
        return added, removed

    def _place(self, streams: Sequence[str]) -> None:
        rest = list(streams)
        for conn in self._conns:
            room = self._per_conn - len(conn.streams)
            if rest and room > 0 and not conn.retiring and self.subscribe:
                conn.add(rest[:room])
                rest = rest[room:]
        while rest:
            self._open(rest[: self._per_conn])
            rest = rest[self._per_conn :]

    def _open(self, streams: Iterable[str]) -> Connection:
        conn = Connection(
            self._next_id,
            url=self.url,
            streams=streams,
            subscribe=self.subscribe,
            host=self,
            policy=self.policy,
            max_frame_bytes=self._max_frame_bytes,
            clock_ns=self.tracker.clock_ns,
        )
        self._next_id += 1
        self._conns.append(conn)
        if not self._closed:
            conn.start()
        return conn

    def tick(self) -> None:
        """Start and finish rotations, drop closed connections, raise a connection's RetriesExhaustedError, and log
        an ERROR while nothing has been subscribed for `nothing_alarm_s` (once per that many seconds)."""
        now = time.monotonic()
        with self._lock:
            for conn in self._conns:
                if conn.exhausted is not None:
                    raise conn.exhausted
            for conn in list(self._conns):
                if conn.rotate_wanted and not conn.retiring and conn.state != State.CLOSED:
                    new = self._open(conn.streams)
                    conn.retire()
                    self._rotations[new] = (conn, now)
                    logger.info("%s: %s; connection %s replaces it", conn.label(), conn.rotate_wanted, new.id)
            for new, (old, started) in list(self._rotations.items()):
                if old.state == State.CLOSED:  # lost before the switch: `lost` recorded what it had to
                    del self._rotations[new]
                elif new.state == State.LIVE and new.live_frames > 0:
                    self._switch(old, new, "")
                elif now - started > self._rotation_timeout_s:
                    self._switch(old, new, f"replacement not live within {self._rotation_timeout_s:.0f}s")
            for conn in [c for c in self._conns if c.state == State.CLOSED]:
                self._conns.remove(conn)
                self._reconnects_gone += conn.reconnects
                self._kinds_gone.update(conn.reconnect_kinds)
            subscribed = any(c.confirmed for c in self._conns)
        if subscribed or (not self._wanted and self.source_error is None):
            self._subscribed_at = now
        elif now - self._subscribed_at >= self._nothing_alarm_s and now - self._alarmed_at >= self._nothing_alarm_s:
            self._alarmed_at = now
            logger.error(
                "nothing subscribed for %.0fs (%d streams wanted, %d connections): %s",
                now - self._subscribed_at,
                len(self._wanted),
                len(self._conns),
                self.last_error() or "no error recorded",
            )

    def _switch(self, old: Connection, new: Connection, why: str) -> None:
        """Close the rotated connection; its streams that nothing else has subscribed get a gap."""
        del self._rotations[new]
        covered = frozenset().union(*(c.confirmed for c in self._conns if c is not old))
        uncovered = old.streams - covered
        old.close()
        if uncovered:
            self.tracker.interrupt(uncovered, f"reconnected: rotation, {why}")
            logger.warning(
                "%s replaced by connection %s: %s; %d streams with a gap", old.label(), new.id, why, len(uncovered)
            )
        else:
            logger.info("%s replaced by connection %s without a gap", old.label(), new.id)

    def last_error(self) -> str | None:
        """The newest last error of a connection, or the stream list's."""
        with self._lock:
            errors = sorted((c.since, c.last_error) for c in self._conns if c.last_error)
        if errors:
            return f"connection: {errors[-1][1]}"
        return self.source_error

    def statuses(self) -> list[ConnectionStatus]:
        with self._lock:
            return [c.status() for c in self._conns]

    def subscribed(self) -> int:
        """Distinct streams subscribed now, on any connection."""
        with self._lock:
            return len(frozenset().union(*(c.confirmed for c in self._conns)))

    def connected(self) -> bool:
        with self._lock:
            return any(c.state in (State.LIVE, State.ROTATING) for c in self._conns)

    def reconnects(self) -> int:
        with self._lock:
            return self._reconnects_gone + sum(c.reconnects for c in self._conns)

    def reconnect_kinds(self) -> dict[str, int]:
        """Reconnects and failed connects of every connection so far, by kind (feed.connection.RECONNECT_KINDS)."""
        with self._lock:
            total = Counter(self._kinds_gone)
            for c in self._conns:
                total.update(dict(c.reconnect_kinds))  # a copy: the reader thread may be counting
        return dict(total)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every connection and wait for their readers."""
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for conn in conns:
            conn.close()
        for conn in conns:
            conn.join(timeout_s)


def _log_change(what: str, streams: Sequence[str]) -> None:
    if streams:
        more = f" and {len(streams) - _LOGGED_NAMES} more" if len(streams) > _LOGGED_NAMES else ""
        logger.info("%s %d streams: %s%s", what, len(streams), ", ".join(streams[:_LOGGED_NAMES]), more)
