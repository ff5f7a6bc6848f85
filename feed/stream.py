"""The one home of websocket code: URL building, connecting with capped backoff, the silence watchdog, the
planned reconnect before Binance's 24-hour cut-off, and a cap on message size. Frames go out raw, with their receive
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
from websocket._abnf import ABNF, continuous_frame, frame_buffer

from models.errors import ConfigError, RetriesExhaustedError
from models.settings import ReconnectPolicy, Settings
from models.vocabulary import MAX_FRAME_BYTES, Speed, stream_name

__all__ = ["OTHER_STREAMS", "StreamClient", "StreamStats", "build_url", "peek"]

logger = logging.getLogger(__name__)

_MAX_STREAM_NAME = 100  # Binance's names are ~30 characters; a longer one is not ours and is never stored
_MAX_LAST_UPDATE_ID = 2**63 - 1  # the worker's (and PostgreSQL bigint's) range
_RESET_JUMP = 1_000_000  # ids this far back are a server reset, not a stale frame...
_RESET_MIN_JUMP = 1_000  # ...and so are ids at most half the last one and more than this far back (see _is_reset)
_STABLE_S = 10.0  # a connection that lasted less (or less than the silence timeout) counts as a failed attempt
_STARTED_NS = 1_000  # a "feed started" gap ends at the stream's first frame and lasts this long
_EXCERPT_CHARS = 1024  # what on_reject gets of a message refused here
OTHER_STREAMS = "?"  # the one per_stream counter for frames of streams not subscribed (or of no stream)
_DATA_OPCODES = (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT)


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


def peek(raw: str) -> tuple[str | None, int | None]:
    """(stream, lastUpdateId) of a combined partial-depth frame by string search, without parsing the levels.
    A stream name over 100 characters reads as no stream; an id outside [0, 2**63) as no id."""
    if not raw.startswith('{"stream":"'):
        return None, None
    end = raw.find('"', 11, 12 + _MAX_STREAM_NAME)
    if end < 0:
        return None, None
    stream = raw[11:end]
    i = raw.find('"lastUpdateId":', end)
    if i < 0:
        return stream, None
    j = i + 15
    k = j
    while k < len(raw) and "0" <= raw[k] <= "9":  # ASCII only: str.isdigit() accepts "²" and "٩"
        k += 1
    if not (j < k <= j + 19 and k < len(raw) and raw[k] in ",}"):
        return stream, None
    luid = int(raw[j:k])
    return stream, (luid if luid <= _MAX_LAST_UPDATE_ID else None)


class _Reconnect(Exception):
    pass


class _MessageTooLarge(Exception):
    """A data message over the cap, read and discarded; `excerpt` holds its first bytes."""

    def __init__(self, reason: str, excerpt: bytes) -> None:
        super().__init__(reason)
        self.reason, self.excerpt = reason, excerpt


class _CappedFrameBuffer(frame_buffer):
    """websocket-client neither limits frame sizes nor the sum of a fragmented message's frames, and a message
    trickled in never times out. This buffer caps the whole message at `max_bytes` from the announced lengths
    (an oversized one is read in bounded chunks, discarded, then raised as _MessageTooLarge, keeping the connection)
    and raises _Reconnect once no message has completed for `silence_ns`, even in the middle of one, or as soon as
    `stop` is set (a message trickled in never returns to the reader's loop)."""

    def __init__(
        self,
        recv: Callable[[int], bytes],
        *,
        max_bytes: int,
        silence_ns: int,
        clock_ns: Callable[[], int],
        stop: threading.Event,
    ) -> None:
        super().__init__(self._recv_in_time, True)
        self._sock_recv, self._clock_ns, self._stop = recv, clock_ns, stop
        self.max_bytes, self.silence_ns = max_bytes, silence_ns
        self.last_message_ns = clock_ns()  # the reader moves it on after each complete message
        self.message_bytes = 0  # payload bytes of the data message being received
        self.head = b""  # its first bytes, for the excerpt of a refused message
        self.oversized = False
        self._discard_left: int | None = None

    def _recv_in_time(self, bufsize: int) -> bytes:
        if self._stop.is_set():
            raise _Reconnect("stopped")
        now = self._clock_ns()
        if now - self.last_message_ns > self.silence_ns:
            raise _Reconnect(f"no complete message for {(now - self.last_message_ns) / 1e9:.0f}s")
        return self._sock_recv(bufsize)

    def recv_frame(self) -> ABNF:
        with self.lock:
            while True:
                if self.needs_header():
                    self.recv_header()
                if self.header is None:
                    raise websocket.WebSocketProtocolException("Header not received")
                fin, rsv1, rsv2, rsv3, opcode, has_mask, _ = self.header
                if self.needs_length():
                    self.recv_length()
                    self._account(opcode)
                if self.needs_mask():
                    self.recv_mask()
                if self.oversized and opcode in _DATA_OPCODES:
                    self._discard_payload()
                    if fin:
                        self._refuse()
                    continue
                payload = self.recv_strict(self.length or 0)
                if has_mask:
                    payload = ABNF.mask(self.mask_value or b"", payload)
                self.clear()
                if opcode in _DATA_OPCODES:
                    if fin:
                        self.message_bytes, self.head = 0, b""
                    elif len(self.head) < _EXCERPT_CHARS:  # kept in case a later fragment breaks the cap
                        self.head += payload[: _EXCERPT_CHARS - len(self.head)]
                frame = ABNF(fin, rsv1, rsv2, rsv3, opcode, has_mask, payload)
                frame.validate(self.skip_utf8_validation)
                return frame

    def _account(self, opcode: int) -> None:
        """Check a frame's announced length before a byte of its payload is read."""
        length = self.length or 0
        if opcode not in _DATA_OPCODES:
            if length > 125:  # RFC 6455 5.5: control frames are small; never buffer a big one
                raise websocket.WebSocketProtocolException(f"control frame of {length} bytes")
            return
        if opcode != ABNF.OPCODE_CONT:
            self.message_bytes, self.head = 0, b""
        self.message_bytes += length
        if self.message_bytes > self.max_bytes:
            self.oversized = True

    def _discard_payload(self) -> None:
        """Read the current frame's payload in chunks of at most 16 KiB, keeping only the excerpt; resumable after
        a socket timeout."""
        if self._discard_left is None:
            self._discard_left = self.length or 0
        while self._discard_left > 0:
            chunk = self.recv_strict(min(16384, self._discard_left))
            self._discard_left -= len(chunk)
            if len(self.head) < _EXCERPT_CHARS:
                self.head += chunk[: _EXCERPT_CHARS - len(self.head)]
        self._discard_left = None
        self.clear()

    def _refuse(self) -> None:
        reason = f"message of {self.message_bytes} bytes exceeds the {self.max_bytes}-byte limit"
        excerpt = self.head
        self.message_bytes, self.head, self.oversized = 0, b"", False
        raise _MessageTooLarge(reason, excerpt)


class _Fragments(continuous_frame):
    """Joins a fragmented message in a bytearray: websocket-client's `bytes +=` copies it whole per fragment."""

    def add(self, frame: ABNF) -> None:
        if self.cont_data:
            self.cont_data[1] += frame.data
        else:
            if frame.opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
                self.recving_frames = frame.opcode
            data = frame.data
            self.cont_data = [frame.opcode, bytearray(data.encode() if isinstance(data, str) else data)]
        if frame.fin:
            self.recving_frames = None


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
    or stale: they are dropped and counted. An id more than 1,000,000 below it, or at most half of it and more than
    1,000 below, is a server reset (at any time, reconnect or not): the frame is forwarded, the stream restarts
    from it and a "lastUpdateId reset" gap is recorded. Only subscribed streams have state;
    frames of others are forwarded and counted under OTHER_STREAMS. `on_gap(stream, start_ns, end_ns, reason)`
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

    def _session(self, ws: websocket.WebSocket, buf: _CappedFrameBuffer, stop: threading.Event) -> str:
        """Read one connection until it ends or `stop` is set; returns why it ended."""
        self.stats.connected = True
        logger.info("connected to %s", self._safe_url())
        reason = "stopped"
        try:
            self._read(ws, buf, stop)
        except _Reconnect as exc:
            reason = str(exc)
        except (websocket.WebSocketException, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.stats.connected = False
            with contextlib.suppress(Exception):  # closing a broken socket may fail; it is gone either way
                ws.close(timeout=1)
            # close() skips a connection the server already closed (it answered the close frame), leaving its socket
            ws.shutdown()  # type: ignore[no-untyped-call]
        if buf.oversized:  # dropped in the middle of discarding a message over the cap
            self._reject(self._clock_ns(), f"{buf.message_bytes}+ bytes, unfinished: {reason}", buf.head)
        return reason

    def _connect(self, stop: threading.Event) -> tuple[websocket.WebSocket, _CappedFrameBuffer]:
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
        ws.connect(self.url, timeout=10, suppress_origin=True)  # type: ignore[no-untyped-call]
        buf = _CappedFrameBuffer(
            ws._recv, max_bytes=self._max_frame_bytes, silence_ns=self._silence_ns, clock_ns=self._clock_ns, stop=stop
        )
        ws.frame_buffer = buf
        ws.cont_frame = _Fragments(False, True)
        ws.settimeout(min(1.0, self._silence_ns / 1e9))
        return ws, buf

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

    def _read(self, ws: websocket.WebSocket, buf: _CappedFrameBuffer, stop: threading.Event) -> None:
        opened = self._clock_ns()
        while not stop.is_set():
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue  # the buffer raises _Reconnect once the socket has been silent too long
            except _MessageTooLarge as exc:
                received_ns = buf.last_message_ns = self._clock_ns()
                ws.cont_frame = _Fragments(False, True)  # forget the fragments joined before the cap was hit
                self._reject(received_ns, exc.reason, exc.excerpt)
                continue
            received_ns = self._clock_ns()  # stamped before anything else is done with the frame
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise _Reconnect("server closed the connection")
            buf.last_message_ns = received_ns
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError:
                raw = data.decode("utf-8", errors="replace")  # the worker will reject it with a reason
            self._handle(received_ns, raw)
            if received_ns - opened > self._max_age_ns:
                raise _Reconnect("planned reconnect before the server's connection lifetime ends")

    def _reject(self, received_ns: int, reason: str, head: bytes) -> None:
        self.stats.rejected += 1
        excerpt = head.decode("utf-8", errors="replace")[:_EXCERPT_CHARS]
        logger.warning("refused a message: %s", reason)
        if self._on_reject is not None:
            self._on_reject(received_ns, reason, excerpt)

    def _handle(self, received_ns: int, raw: str) -> None:
        stream, luid = peek(raw)
        if stream is None:
            event = _control_event(raw)
            if event == "serverShutdown":
                raise _Reconnect("server announced shutdown")
            if event == "reply":
                return
        elif stream not in self._subscribed:
            stream = None  # forwarded for the worker to judge, but no state kept for a name we did not ask for
        elif luid is not None:
            last = self._last.get(stream, -1)
            if luid > last:
                self._last[stream] = luid
            elif _is_whole_frame(raw, luid):  # a broken frame that only looks stale is forwarded (and rejected)
                if not _is_reset(last, luid):
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


def _is_reset(last: int, luid: int) -> bool:
    """Whether an id at or below the stream's last forwarded one means the server restarted its ids (rather than a
    stale or repeated frame, e.g. a server a few updates behind after a reconnect): far below it, or at most half of
    it and well below. The same rule holds at any time, so a bogus jump forward (900000 after 1000) is undone by
    the next real id (1001 is a reset); a small bogus jump only hides the updates up to it, and the stall check
    reports that silence as a gap."""
    back = last - luid
    return back > _RESET_JUMP or (luid <= last // 2 and back > _RESET_MIN_JUMP)


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
