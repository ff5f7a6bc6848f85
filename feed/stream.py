"""The one home of websocket code: URL building, connecting with capped backoff, the silence watchdog, the
planned reconnect before Binance's 24-hour cut-off, and a cap on frame size. Frames go out raw, with their receive
time stamped first; nothing here parses more than the stream name and lastUpdateId."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson
import websocket
from websocket._abnf import frame_buffer

from models.errors import ConfigError, RetriesExhaustedError

__all__ = ["StreamClient", "StreamStats", "build_url", "peek"]

logger = logging.getLogger(__name__)


def build_url(url: str, *, symbols: tuple[str, ...], depth: int, speed: str) -> str:
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
    suffix = "@100ms" if speed == "100ms" else ""
    streams = "/".join(f"{s.lower()}@depth{depth}{suffix}" for s in symbols)
    base = path[: -len("/ws")] if path.endswith("/ws") else path
    return urlunsplit((parts.scheme, parts.netloc, f"{base}/stream", f"streams={streams}", ""))


def peek(raw: str) -> tuple[str | None, int | None]:
    """(stream, lastUpdateId) of a combined partial-depth frame by string search, without parsing the levels."""
    if not raw.startswith('{"stream":"'):
        return None, None
    end = raw.find('"', 11)
    stream = raw[11:end] if end > 0 else None
    i = raw.find('"lastUpdateId":', end)
    if i < 0:
        return stream, None
    j = i + 15
    k = j
    while k < len(raw) and "0" <= raw[k] <= "9":  # ASCII only: str.isdigit() accepts "²" and "٩"
        k += 1
    complete = j < k <= j + 19 and k < len(raw) and raw[k] in ",}"
    return stream, (int(raw[j:k]) if complete else None)


class _Reconnect(Exception):
    pass


class _CappedFrameBuffer(frame_buffer):
    """websocket-client has no frame size limit: refuse a frame whose header announces more than `max_bytes`."""

    max_bytes = 1 << 20

    def recv_length(self) -> None:
        super().recv_length()
        if self.length is not None and self.length > self.max_bytes:
            raise _Reconnect(f"frame of {self.length} bytes exceeds the {self.max_bytes}-byte limit")


@dataclass(slots=True)
class StreamStats:
    frames: int = 0
    duplicates: int = 0
    reconnects: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)
    last_frame_ns: int = 0
    connected: bool = False


class StreamClient:
    """Reads one combined-stream connection forever, reconnecting as needed, and passes frames to `on_frame`.

    Frames whose lastUpdateId is not above the last one forwarded for their stream are duplicates or stale: they
    are dropped and counted. `on_gap(stream, start_ns, end_ns, reason)` is told of every interval in which a stream
    may have lost data: a reconnect, a stall (no frame for `stall_timeout_s` while others flow or the socket is
    open), or a feed restart (streams passed in `last_seen`, e.g. from the previous process). The interval runs from
    the stream's last frame to its next one.
    """

    def __init__(
        self,
        url: str,
        *,
        on_frame: Callable[[int, str], None],
        on_gap: Callable[[str, int, int, str], None] | None = None,
        last_seen: dict[str, int] | None = None,
        silence_timeout_s: float = 30.0,
        stall_timeout_s: float = 10.0,
        max_connection_age_s: float = 23.5 * 3600,
        max_frame_bytes: int = 1 << 20,
        max_reconnect_attempts: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.url = url
        self._on_frame = on_frame
        self._on_gap = on_gap
        self._silence_ns = int(silence_timeout_s * 1e9)
        self._max_age_ns = int(max_connection_age_s * 1e9)
        self._max_frame_bytes = max_frame_bytes
        self._max_attempts = max_reconnect_attempts
        self._clock_ns = clock_ns
        self._stall_ns = int(stall_timeout_s * 1e9)
        self._last: dict[str, int] = {}
        self.streams = _streams_of(url)
        # stream -> (start_ns, reason) of an interruption that ends with the stream's next frame
        self._interrupted: dict[str, tuple[int, str]] = {
            s: (ns, "feed restarted") for s, ns in (last_seen or {}).items() if s in self.streams
        }
        self.last_seen: dict[str, int] = {}
        self._gap_lock = threading.Lock()  # the reader and the ticker both touch interruptions
        self.stats = StreamStats()

    def run(self, stop: threading.Event) -> None:
        """Read until `stop` is set. Raises RetriesExhaustedError after `max_reconnect_attempts` failed connects
        in a row (0: never give up)."""
        failures = 0
        while not stop.is_set():
            try:
                ws = self._connect()
            except Exception as exc:  # refused, DNS, TLS, handshake: all are "try again later"
                failures += 1
                if self._max_attempts and failures >= self._max_attempts:
                    raise RetriesExhaustedError(
                        f"could not connect to {self._safe_url()}: {exc}", attempts=failures
                    ) from exc
                delay = min(30.0, 0.5 * 2 ** min(failures - 1, 6)) * random.uniform(0.5, 1.0)
                logger.warning("connect failed (%s); retry %d in %.1fs", exc, failures, delay)
                stop.wait(delay)
                continue
            failures = 0
            self.stats.connected = True
            logger.info("connected to %s", self._safe_url())
            reason = "stopped"
            try:
                self._read(ws, stop)
            except _Reconnect as exc:
                reason = str(exc)
            except (websocket.WebSocketException, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self.stats.connected = False
                with contextlib.suppress(Exception):  # closing a broken socket may fail; it is gone either way
                    ws.close(timeout=1)
            if not stop.is_set():
                self.stats.reconnects += 1
                self._interrupt_all(f"reconnected: {reason}")
                logger.warning("reconnecting: %s", reason)

    def _connect(self) -> websocket.WebSocket:
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
        buf = _CappedFrameBuffer(ws._recv, True)
        buf.max_bytes = self._max_frame_bytes
        ws.frame_buffer = buf
        ws.connect(self.url, timeout=10, suppress_origin=True)  # type: ignore[no-untyped-call]
        ws.settimeout(min(1.0, self._silence_ns / 1e9))
        return ws

    def _interrupt_all(self, reason: str) -> None:
        now = self._clock_ns()
        with self._gap_lock:
            for s in self.streams:
                if s not in self._interrupted:
                    self._interrupted[s] = (self.last_seen.get(s, now), reason)

    def check_stalls(self) -> None:
        """Mark streams silent for longer than the stall timeout; call it now and then (the feed's ticker does)."""
        now = self._clock_ns()
        with self._gap_lock:
            for s in self.streams:
                seen = self.last_seen.get(s)
                if seen is not None and now - seen > self._stall_ns and s not in self._interrupted:
                    self._interrupted[s] = (seen, "stalled")
                    logger.warning("stream %s stalled: no frame for %.0fs", s, (now - seen) / 1e9)

    def _read(self, ws: websocket.WebSocket, stop: threading.Event) -> None:
        opened = last = self._clock_ns()
        while not stop.is_set():
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                now = self._clock_ns()
                if now - last > self._silence_ns:
                    raise _Reconnect(f"no data for {(now - last) / 1e9:.0f}s") from None
                continue
            received_ns = self._clock_ns()  # stamped before anything else is done with the frame
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise _Reconnect("server closed the connection")
            last = received_ns
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError:
                raw = data.decode("utf-8", errors="replace")  # the worker will reject it with a reason
            self._handle(received_ns, raw)
            if received_ns - opened > self._max_age_ns:
                raise _Reconnect("planned reconnect before the server's connection lifetime ends")

    def _handle(self, received_ns: int, raw: str) -> None:
        stream, luid = peek(raw)
        if stream is None:
            event = _control_event(raw)
            if event == "serverShutdown":
                raise _Reconnect("server announced shutdown")
            if event == "reply":
                return
        elif luid is not None:
            if luid > self._last.get(stream, -1):
                self._last[stream] = luid
            elif _is_whole_frame(raw, luid):
                self.stats.duplicates += 1
                return
            # else: a broken frame that only looks stale (cut inside its id); the worker records it as rejected
        self.stats.frames += 1
        self.stats.last_frame_ns = received_ns
        if stream is not None:
            with self._gap_lock:
                self.last_seen[stream] = received_ns
                gap = self._interrupted.pop(stream, None)
            if gap is not None and self._on_gap is not None:
                self._on_gap(stream, gap[0], received_ns, gap[1])
        key = stream or "?"
        self.stats.per_stream[key] = self.stats.per_stream.get(key, 0) + 1
        self._on_frame(received_ns, raw)

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


def _is_whole_frame(raw: str, luid: int) -> bool:
    """True when `raw` really is a partial-depth frame with this lastUpdateId. Only frames about to be dropped as
    stale are parsed in full, so a truncated or otherwise broken frame is never dropped in silence."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    data = msg.get("data") if isinstance(msg, dict) else None
    return isinstance(data, dict) and type(data.get("lastUpdateId")) is int and data["lastUpdateId"] == luid


def _control_event(raw: str) -> str | None:
    """'serverShutdown', 'reply' (a SUBSCRIBE answer) or None (data to forward; the worker judges it)."""
    if len(raw) > 4096:
        return None
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(msg, dict):
        if msg.get("e") == "serverShutdown":
            return "serverShutdown"
        if "id" in msg and ("result" in msg or "error" in msg):
            return "reply"
    return None
