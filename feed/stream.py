"""The one home of the feed's websocket connection: the combined-stream URL, the read loop with capped backoff
and the planned reconnect before Binance's 24-hour cut-off, the lastUpdateId filter, and the gaps of each stream.
Frames go out raw, their receive time stamped first; framing lives in feed/frames.py, reading ids in feed/ids.py."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit, urlunsplit

import websocket

from feed.frames import (
    EXCERPT_CHARS,
    CappedFrameBuffer,
    MessageTooLarge,
    Reconnect,
    close_socket,
    forget_fragments,
    open_socket,
)
from feed.ids import control_event, is_reset, is_whole_frame, peek
from models.errors import ConfigError, RetriesExhaustedError
from models.settings import ReconnectPolicy, Settings
from models.vocabulary import MAX_FRAME_BYTES, Speed, stream_name

__all__ = ["OTHER_STREAMS", "StreamClient", "StreamStats", "build_url"]

logger = logging.getLogger(__name__)

_STABLE_S = 10.0  # a connection that lasted less (or less than the silence timeout) counts as a failed attempt
_STARTED_NS = 1_000  # a "feed started" gap ends at the stream's first frame and lasts this long
OTHER_STREAMS = "?"  # the one per_stream counter for frames of streams not subscribed (or of no stream)


def build_url(url: str, *, symbols: tuple[str, ...], depth: int, speed: Speed) -> str:
    """A combined-stream URL. A URL that already names streams (`/stream?streams=a/b`) is kept; `/ws/<stream>` is
    turned into its combined form; a bare endpoint (`wss://host:port`) gets the streams of `symbols`."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"not a websocket URL: {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/stream"):
        streams = parse_qs(parts.query).get("streams", [""])[0]
        if not streams:
            raise ConfigError(f"{url!r} has no ?streams=")
        return url
    if "/ws/" in path + "/" and path.rsplit("/ws", 1)[1].strip("/"):
        base, stream = path.rsplit("/ws/", 1)
        return urlunsplit((parts.scheme, parts.netloc, f"{base}/stream", f"streams={stream}", ""))
    streams = "/".join(stream_name(s, depth, speed) for s in symbols)
    base = path[: -len("/ws")] if path.endswith("/ws") else path
    return urlunsplit((parts.scheme, parts.netloc, f"{base}/stream", f"streams={streams}", ""))


@dataclass(slots=True)
class StreamStats:
    frames: int = 0
    duplicates: int = 0
    rejected: int = 0  # messages refused here (over the size cap), reported through on_reject
    reconnects: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)  # subscribed streams, the rest under OTHER_STREAMS
    last_frame_ns: int = 0
    connected: bool = False


class StreamClient:
    """Reads one combined-stream connection forever, reconnecting as needed, and passes frames to `on_frame`.

    Frames whose lastUpdateId (in [0, 2**63)) is not above the last one forwarded for their stream are duplicates
    or stale: they are dropped and counted, unless the id is a server reset (feed.ids.is_reset): then the frame is
    forwarded, the stream restarts from it and a "lastUpdateId reset" gap is recorded. Only subscribed streams have
    state; frames of others are forwarded and counted under OTHER_STREAMS. `on_gap(stream, start_ns, end_ns, reason)`
    is told of every interval in which a stream may have lost data: a reconnect, a stall (no frame for
    `policy.stall_timeout_s`), an id reset, a feed restart (streams passed in `last_seen`, e.g. from the previous
    process; a stream without one gets a short "feed started" gap at its first frame), each running from the stream's
    last frame to its next one; and, when `run` returns, "feed stopped" from each stream's last frame to then.
    Timeouts, the connection lifetime and the backoff come from `policy` (Settings.reconnect_policy); a connection
    that ends within 10 s (or the silence timeout, if shorter) counts as a failed attempt for the backoff.
    A message over `max_frame_bytes` bytes (all fragments together) is not forwarded but passed to
    `on_reject(received_ns, reason, excerpt)`, the excerpt being its first 1024 characters.
    """

    def __init__(
        self,
        url: str,
        *,
        on_frame: Callable[[int, str], None],
        on_gap: Callable[[str, int, int, str], None] | None = None,
        on_reject: Callable[[int, str, str], None] | None = None,
        last_seen: dict[str, int] | None = None,
        policy: ReconnectPolicy | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.url = url
        self._on_frame = on_frame
        self._on_gap = on_gap
        self._on_reject = on_reject
        self.policy = policy = policy or ReconnectPolicy.default()
        self._silence_ns = int(policy.silence_timeout_s * 1e9)
        self._max_age_ns = int(policy.max_connection_age_s * 1e9)
        self._max_frame_bytes = max_frame_bytes
        self._clock_ns = clock_ns
        self._stall_ns = int(policy.stall_timeout_s * 1e9)
        self._stable_ns = int(min(_STABLE_S, policy.silence_timeout_s) * 1e9)
        self._last: dict[str, int] = {}
        self.streams = _streams_of(url)
        self._subscribed = frozenset(self.streams)
        previous = last_seen or {}
        # stream -> (start_ns, reason) of an interruption that ends with the stream's next frame (-1: just before it)
        self._interrupted: dict[str, tuple[int, str]] = {
            s: (previous[s], "feed restarted") if s in previous else (-1, "feed started") for s in self.streams
        }
        self.last_seen: dict[str, int] = {}  # subscribed streams only
        self.stopped: dict[str, int] = {}  # when run returned, per stream given a "feed stopped" gap: that stop time
        self._gap_lock = threading.Lock()  # the reader and the ticker both touch interruptions
        self.stats = StreamStats()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        on_frame: Callable[[int, str], None],
        on_gap: Callable[[str, int, int, str], None] | None = None,
        on_reject: Callable[[int, str, str], None] | None = None,
        last_seen: dict[str, int] | None = None,
    ) -> StreamClient:
        """The client of the feed `settings` describe: its URL (see build_url), reconnect policy and message cap."""
        url = build_url(settings.url, symbols=settings.symbols, depth=settings.depth, speed=settings.speed)
        return cls(
            url,
            on_frame=on_frame,
            on_gap=on_gap,
            on_reject=on_reject,
            last_seen=last_seen,
            policy=settings.reconnect_policy,
            max_frame_bytes=settings.max_frame_bytes,
        )

    def run(self, stop: threading.Event) -> None:
        """Read until `stop` is set, then report "feed stopped" gaps. Raises RetriesExhaustedError after
        `policy.max_reconnect_attempts` failed connects in a row (0: never give up)."""
        try:
            self._run(stop)
        finally:
            self._stopped()

    def _run(self, stop: threading.Event) -> None:
        # Failed attempts in a row: refused connects, and connections that ended before they proved stable (a
        # server that accepts, sends a frame and closes must not be hammered without a delay).
        failures = 0
        while not stop.is_set():
            try:
                ws, buf = self._connect(stop)
            except Exception as exc:  # refused, DNS, TLS, handshake: all are "try again later"
                failures += 1
                if self.policy.max_reconnect_attempts and failures >= self.policy.max_reconnect_attempts:
                    raise RetriesExhaustedError(
                        f"could not connect to {self._safe_url()}: {exc}", attempts=failures
                    ) from exc
                self._back_off(stop, failures, f"connect failed ({exc})")
                continue
            opened = self._clock_ns()
            reason = self._session(ws, buf, stop)
            if stop.is_set():
                return
            self.stats.reconnects += 1
            self._interrupt_all(f"reconnected: {reason}")
            lasted_ns = self._clock_ns() - opened
            if lasted_ns < self._stable_ns:
                failures += 1
                self._back_off(stop, failures, f"reconnecting: {reason} (after {lasted_ns / 1e9:.1f}s)")
            else:
                failures = 0
                logger.warning("reconnecting: %s", reason)

    def _back_off(self, stop: threading.Event, failures: int, what: str) -> None:
        delay = self.policy.backoff_s(failures) * random.uniform(0.5, 1.0)
        logger.warning("%s; retry %d in %.1fs", what, failures, delay)
        stop.wait(delay)

    def _session(self, ws: websocket.WebSocket, buf: CappedFrameBuffer, stop: threading.Event) -> str:
        """Read one connection until it ends or `stop` is set; returns why it ended."""
        self.stats.connected = True
        logger.info("connected to %s", self._safe_url())
        reason = "stopped"
        try:
            self._read(ws, buf, stop)
        except Reconnect as exc:
            reason = str(exc)
        except (websocket.WebSocketException, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.stats.connected = False
            close_socket(ws)
        if buf.oversized:  # dropped in the middle of discarding a message over the cap
            self._reject(self._clock_ns(), f"{buf.message_bytes}+ bytes, unfinished: {reason}", buf.head)
        return reason

    def _connect(self, stop: threading.Event) -> tuple[websocket.WebSocket, CappedFrameBuffer]:
        return open_socket(
            self.url, max_bytes=self._max_frame_bytes, silence_ns=self._silence_ns, clock_ns=self._clock_ns, stop=stop
        )

    def _interrupt_all(self, reason: str) -> None:
        now = self._clock_ns()
        with self._gap_lock:
            for s in self.streams:
                if s not in self._interrupted:
                    self._interrupted[s] = (self.last_seen.get(s, now), reason)

    def _stopped(self) -> None:
        """The feed stops seeing its streams now: a gap from each stream's last frame, so its window is incomplete.
        `stopped` then holds where the next feed process's "feed restarted" gap should start, so that the two
        processes do not both report the span before the stop."""
        now = self._clock_ns()
        with self._gap_lock:
            seen = dict(self.last_seen)
        self.stopped = {s: max(now, ns) for s, ns in seen.items()}
        if self._on_gap is not None:
            for s, ns in seen.items():
                self._on_gap(s, ns, self.stopped[s], "feed stopped")

    def check_stalls(self) -> None:
        """Mark streams silent for longer than the stall timeout; call it now and then (the feed's ticker does)."""
        now = self._clock_ns()
        with self._gap_lock:
            for s in self.streams:
                seen = self.last_seen.get(s)
                if seen is not None and now - seen > self._stall_ns and s not in self._interrupted:
                    self._interrupted[s] = (seen, "stalled")
                    logger.warning("stream %s stalled: no frame for %.0fs", s, (now - seen) / 1e9)

    def _read(self, ws: websocket.WebSocket, buf: CappedFrameBuffer, stop: threading.Event) -> None:
        opened = self._clock_ns()
        while not stop.is_set():
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue  # the buffer raises Reconnect once the socket has been silent too long
            except MessageTooLarge as exc:
                received_ns = buf.last_message_ns = self._clock_ns()
                forget_fragments(ws)  # the fragments joined before the cap was hit
                self._reject(received_ns, exc.reason, exc.excerpt)
                continue
            received_ns = self._clock_ns()  # stamped before anything else is done with the frame
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise Reconnect("server closed the connection")
            buf.last_message_ns = received_ns
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError:
                raw = data.decode("utf-8", errors="replace")  # the worker will reject it with a reason
            self._handle(received_ns, raw)
            if received_ns - opened > self._max_age_ns:
                raise Reconnect("planned reconnect before the server's connection lifetime ends")

    def _reject(self, received_ns: int, reason: str, head: bytes) -> None:
        self.stats.rejected += 1
        excerpt = head.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
        logger.warning("refused a message: %s", reason)
        if self._on_reject is not None:
            self._on_reject(received_ns, reason, excerpt)

    def _handle(self, received_ns: int, raw: str) -> None:
        stream, luid = peek(raw)
        if stream is None:
            event = control_event(raw)
            if event == "serverShutdown":
                raise Reconnect("server announced shutdown")
            if event == "reply":
                return
        elif stream not in self._subscribed:
            stream = None  # forwarded for the worker to judge, but no state kept for a name we did not ask for
        elif luid is not None:
            last = self._last.get(stream, -1)
            if luid > last:
                self._last[stream] = luid
            elif is_whole_frame(raw, luid):  # a broken frame that only looks stale is forwarded (and rejected)
                if not is_reset(last, luid):
                    self.stats.duplicates += 1
                    return
                self._last[stream] = luid
                self._reset(stream, received_ns, f"lastUpdateId reset from {last} to {luid}")
        self.stats.frames += 1
        self.stats.last_frame_ns = received_ns
        if stream is None:
            self.stats.per_stream[OTHER_STREAMS] = self.stats.per_stream.get(OTHER_STREAMS, 0) + 1
        else:
            with self._gap_lock:
                self.last_seen[stream] = received_ns
                gap = self._interrupted.pop(stream, None)
            if gap is not None and self._on_gap is not None:
                start = gap[0] if gap[0] >= 0 else received_ns - _STARTED_NS
                self._on_gap(stream, start, received_ns, gap[1])
            self.stats.per_stream[stream] = self.stats.per_stream.get(stream, 0) + 1
        self._on_frame(received_ns, raw)

    def _reset(self, stream: str, received_ns: int, reason: str) -> None:
        """The server restarted its ids: the stream's data since its last frame may be missing."""
        logger.warning("stream %s: %s", stream, reason)
        with self._gap_lock:
            pending = self._interrupted.get(stream)
            if pending is None:
                self._interrupted[stream] = (self.last_seen.get(stream, received_ns), reason)
            else:
                self._interrupted[stream] = (pending[0], f"{pending[1]}; {reason}")

    def _safe_url(self) -> str:
        """The URL for logs: no credentials, and the stream count instead of a query that can hold 1024 names."""
        p = urlsplit(self.url)
        host = p.hostname or ""
        netloc = f"{host}:{p.port}" if p.port else host
        return urlunsplit((p.scheme, netloc, p.path, "", "")) + f" ({len(self.streams)} streams)"


def _streams_of(url: str) -> tuple[str, ...]:
    """The stream names a combined-stream URL subscribes to."""
    streams = parse_qs(urlsplit(url).query).get("streams", [""])[0]
    return tuple(s for s in streams.split("/") if s)
