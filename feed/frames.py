"""The one home of reading a websocket's frames: websocket-client opens the connection and sends, FrameReader reads.
It takes whatever the socket holds in one call into a buffer of its own and parses every complete message in it
(websocket-client reads a frame in three system calls and a dozen Python calls), caps a message's size (all fragments
together), times out a message that never completes, answers pings and the server's close. Nothing here knows about
streams or ids."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable

import websocket
from websocket._abnf import ABNF

__all__ = ["EXCERPT_CHARS", "Frame", "FrameReader", "Reconnect", "open_socket"]

EXCERPT_CHARS = 1024  # what is kept of a message refused for its size
Frame = tuple[int, str]  # (received_ns, text): a complete data message, its receive time stamped as it is parsed

_TEXT, _BINARY, _CONT = ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT
_CLOSE, _PING, _PONG = ABNF.OPCODE_CLOSE, ABNF.OPCODE_PING, ABNF.OPCODE_PONG
_MIN_READ = 1 << 16  # free room asked of the buffer before each read
_BUFFER_BYTES = 1 << 18  # at least; always room for the largest frame allowed plus a read


class Reconnect(Exception):
    """This connection is over (its message says why); the reader connects again unless stopped."""


class FrameReader:
    """The receiving side of one websocket connection (`ws`, connected, whose socket has a timeout).

    `read` returns the complete data messages (text or binary, decoded as UTF-8, invalid bytes replaced) that one
    socket read completed, in order, each stamped by `clock_ns` as it is parsed; an empty list when the socket's
    timeout passed first. A message over `max_bytes` (all its fragments together, judged by the announced lengths)
    is read in bounded chunks and discarded, then passed to `on_refused(received_ns, reason, excerpt)` with its first
    1,024 bytes; the connection goes on. `read` raises Reconnect once no message has completed for `silence_ns` (even
    in the middle of one, so a message trickled in never holds the connection), as soon as `stop` is set, and after
    the server's close frame (answered); websocket-client's exceptions for a broken protocol or a lost connection.
    Pings are answered, pongs ignored. Only the reader's thread may call `read` and `close`."""

    def __init__(
        self,
        ws: websocket.WebSocket,
        *,
        max_bytes: int,
        silence_ns: int,
        clock_ns: Callable[[], int],
        stop: threading.Event,
        on_refused: Callable[[int, str, bytes], None],
    ) -> None:
        if ws.sock is None:
            raise websocket.WebSocketConnectionClosedException("socket is already closed.")
        self._ws, self._sock = ws, ws.sock
        self.max_bytes, self.silence_ns = max_bytes, silence_ns
        self._clock_ns, self._stop, self._on_refused = clock_ns, stop, on_refused
        self._buf = bytearray(max(_BUFFER_BYTES, max_bytes + 14 + _MIN_READ))
        self._view = memoryview(self._buf)
        self._start = self._end = 0  # the bytes received and not parsed yet
        self.last_message_ns = clock_ns()  # when the last message completed
        self._fragments: bytearray | None = None  # the data message being received in fragments
        self.message_bytes = 0  # payload bytes of the data message being received so far
        self.head = b""  # its first bytes, for the excerpt of a refused message
        self.oversized = False  # it is over the cap: discarded as it comes
        self._discard_left = 0  # payload bytes of the current (oversized) frame still to drop
        self._discard_fin = False  # ...and whether that frame ends its message
        self._closed = False  # the server's close frame arrived

    def read(self) -> list[Frame]:
        if self._closed:
            raise Reconnect("server closed the connection")
        if self._stop.is_set():
            raise Reconnect("stopped")
        now = self._clock_ns()
        if now - self.last_message_ns > self.silence_ns:
            raise Reconnect(f"no complete message for {(now - self.last_message_ns) / 1e9:.0f}s")
        if not self._fill():
            return []
        return self._parse()

    def close(self) -> None:
        """Send a close frame (unless the server closed first: it was answered), then shut the socket down and close
        it without waiting for the server's answer (the connection is being replaced or the feed stops)."""
        ws = self._ws
        with contextlib.suppress(Exception):  # closing a broken socket may fail; it is gone either way
            if ws.connected and not self._closed:
                ws.send_close()
            self._sock.shutdown(socket.SHUT_RDWR)
        ws.shutdown()  # type: ignore[no-untyped-call]

    def _fill(self) -> bool:
        """Receive what the socket holds (waiting at most its timeout) after the unparsed bytes; False on timeout."""
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < _MIN_READ:  # move the unparsed rest (less than a frame) to the front
            rest = self._end - self._start
            self._view[:rest] = self._view[self._start : self._end].tobytes()
            self._start, self._end = 0, rest
        try:
            n = self._sock.recv_into(self._view[self._end :])
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        if not n:
            raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
        self._end += n
        return True

    def _parse(self) -> list[Frame]:
        """Every complete message in the buffer; a partial frame stays for the next read."""
        buf, view, end, clock, max_bytes = self._buf, self._view, self._end, self._clock_ns, self.max_bytes
        pos = self._start
        out: list[Frame] = []
        try:
            while True:
                # The common case first: a whole unmasked text message of 126 to 65,535 bytes, none in fragments.
                if (
                    end - pos >= 4
                    and buf[pos] == 0x81
                    and buf[pos + 1] == 126
                    and self._fragments is None
                    and not self.oversized
                ):
                    at = pos + 4
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    if length <= max_bytes:
                        if end - at < length:
                            break
                        pos = at + length
                        try:
                            text = str(view[at:pos], "utf-8")
                        except UnicodeDecodeError:
                            text = str(view[at:pos], "utf-8", "replace")  # the worker rejects it with a reason
                        out.append((clock(), text))
                        continue
                if self._discard_left:
                    pos = self._discard(pos, end)
                    if self._discard_left:
                        break
                    continue
                if end - pos < 2:
                    break
                b1, b2 = buf[pos], buf[pos + 1]
                length = b2 & 0x7F
                at = pos + 2
                if length == 126:
                    if end - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    at = pos + 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    at = pos + 10
                masked = b2 & 0x80
                if masked:
                    at += 4
                    if end < at:
                        break
                opcode, fin = b1 & 0x0F, b1 & 0x80
                if b1 & 0x70:
                    raise websocket.WebSocketProtocolException("rsv is not implemented, yet")
                if opcode <= _BINARY:  # data: text, binary or a continuation
                    if (opcode == _CONT) != (self._fragments is not None or self.oversized):
                        raise websocket.WebSocketProtocolException("Illegal frame")
                    total = length + (self.message_bytes if opcode == _CONT else 0)
                    if total > self.max_bytes:  # judged before a byte of the payload is kept
                        self.message_bytes, self.oversized, self._fragments = total, True, None
                        self._discard_left, self._discard_fin = length, bool(fin)
                        if not length and fin:
                            self._refuse()
                        pos = at
                        continue
                    if end - at < length:
                        break
                    payload = _payload(view, at, length, masked)
                    pos = at + length
                    if opcode != _CONT:
                        if fin:  # the common case: a whole message in one frame
                            try:
                                text = str(payload, "utf-8")
                            except UnicodeDecodeError:
                                text = str(payload, "utf-8", "replace")
                            out.append((clock(), text))
                            continue
                        self._fragments = bytearray(payload)
                        self.message_bytes, self.head = length, bytes(payload[:EXCERPT_CHARS])
                        continue
                    fragments = self._fragments
                    assert fragments is not None
                    fragments += payload
                    self.message_bytes = total
                    if len(self.head) < EXCERPT_CHARS:  # kept in case a later fragment breaks the cap
                        self.head += payload[: EXCERPT_CHARS - len(self.head)].tobytes()
                    if fin:
                        self._fragments, self.message_bytes, self.head = None, 0, b""
                        out.append((clock(), fragments.decode("utf-8", "replace")))
                    continue
                if opcode not in (_CLOSE, _PING, _PONG):
                    raise websocket.WebSocketProtocolException(f"Invalid opcode {opcode!r}")
                if length > 125 or not fin:  # RFC 6455 5.5: control frames are small and whole; never buffer one
                    raise websocket.WebSocketProtocolException(f"control frame of {length} bytes (fin={bool(fin)})")
                if end - at < length:
                    break
                payload = _payload(view, at, length, masked)
                pos = at + length
                if opcode == _PING:
                    self._ws.pong(payload.tobytes())
                elif opcode == _CLOSE:
                    self._closed = True
                    with contextlib.suppress(websocket.WebSocketException, OSError):
                        self._ws.send_close()  # the answer; the connection is over either way
                    break
        finally:
            self._start = pos
            if out:
                self.last_message_ns = max(self.last_message_ns, out[-1][0])
        return out

    def _discard(self, pos: int, end: int) -> int:
        """Drop what has arrived of the oversized frame's payload (keeping the excerpt); refuse the message once its
        last frame is gone. Returns the position after what was dropped."""
        take = min(self._discard_left, end - pos)
        if len(self.head) < EXCERPT_CHARS:
            self.head += self._view[pos : pos + min(take, EXCERPT_CHARS - len(self.head))].tobytes()
        self._discard_left -= take
        if not self._discard_left and self._discard_fin:
            self._refuse()
        return pos + take

    def _refuse(self) -> None:
        reason = f"message of {self.message_bytes} bytes exceeds the {self.max_bytes}-byte limit"
        excerpt = self.head
        self.message_bytes, self.head, self.oversized = 0, b"", False
        self.last_message_ns = now = self._clock_ns()
        self._on_refused(now, reason, excerpt)


def _payload(view: memoryview, at: int, length: int, masked: int) -> memoryview:
    """The `length` payload bytes of a frame starting at `at`, unmasked with the 4 key bytes before them if masked
    (a server's frames never are; RFC 6455 5.3)."""
    payload = view[at : at + length]
    return memoryview(ABNF.mask(view[at - 4 : at].tobytes(), payload.tobytes())) if masked else payload


def open_socket(
    url: str,
    *,
    max_bytes: int,
    silence_ns: int,
    clock_ns: Callable[[], int],
    stop: threading.Event,
    on_refused: Callable[[int, str, bytes], None],
) -> tuple[websocket.WebSocket, FrameReader]:
    """Connect (10 s timeout) and put a FrameReader on the connection; reads time out within 1 s so its silence and
    stop checks run. Raises what websocket-client raises."""
    ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
    ws.connect(url, timeout=10, suppress_origin=True)  # type: ignore[no-untyped-call]
    ws.settimeout(min(1.0, silence_ns / 1e9))
    reader = FrameReader(
        ws, max_bytes=max_bytes, silence_ns=silence_ns, clock_ns=clock_ns, stop=stop, on_refused=on_refused
    )
    return ws, reader
