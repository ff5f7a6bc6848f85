"""The one home of websocket-client internals: a frame buffer that caps a message's size (all fragments together)
and times out a message that never completes, fragment joining without quadratic copies, and opening and closing a
socket with both installed. Nothing here knows about streams or ids."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import websocket
from websocket._abnf import ABNF, continuous_frame, frame_buffer

__all__ = [
    "EXCERPT_CHARS",
    "CappedFrameBuffer",
    "Fragments",
    "MessageTooLarge",
    "Reconnect",
    "close_socket",
    "forget_fragments",
    "open_socket",
]

EXCERPT_CHARS = 1024  # what is kept of a message refused for its size
_DATA_OPCODES = (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT)
_DISCARD_CHUNK = 16384  # an oversized payload is read and dropped in chunks of at most this many bytes


class Reconnect(Exception):
    """This connection is over (its message says why); the reader connects again unless stopped."""


class MessageTooLarge(Exception):
    """A data message over the cap, read and discarded; `excerpt` holds its first bytes."""

    def __init__(self, reason: str, excerpt: bytes) -> None:
        super().__init__(reason)
        self.reason, self.excerpt = reason, excerpt


class CappedFrameBuffer(frame_buffer):
    """websocket-client neither limits frame sizes nor the sum of a fragmented message's frames, and a message
    trickled in never times out. This buffer caps the whole message at `max_bytes` from the announced lengths
    (an oversized one is read in bounded chunks, discarded, then raised as MessageTooLarge, keeping the connection)
    and raises Reconnect once no message has completed for `silence_ns`, even in the middle of one, or as soon as
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
            raise Reconnect("stopped")
        now = self._clock_ns()
        if now - self.last_message_ns > self.silence_ns:
            raise Reconnect(f"no complete message for {(now - self.last_message_ns) / 1e9:.0f}s")
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
                    elif len(self.head) < EXCERPT_CHARS:  # kept in case a later fragment breaks the cap
                        self.head += payload[: EXCERPT_CHARS - len(self.head)]
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
        """Read the current frame's payload in bounded chunks, keeping only the excerpt; resumable after a socket
        timeout."""
        if self._discard_left is None:
            self._discard_left = self.length or 0
        while self._discard_left > 0:
            chunk = self.recv_strict(min(_DISCARD_CHUNK, self._discard_left))
            self._discard_left -= len(chunk)
            if len(self.head) < EXCERPT_CHARS:
                self.head += chunk[: EXCERPT_CHARS - len(self.head)]
        self._discard_left = None
        self.clear()

    def _refuse(self) -> None:
        reason = f"message of {self.message_bytes} bytes exceeds the {self.max_bytes}-byte limit"
        excerpt = self.head
        self.message_bytes, self.head, self.oversized = 0, b"", False
        raise MessageTooLarge(reason, excerpt)


class Fragments(continuous_frame):
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


def open_socket(
    url: str, *, max_bytes: int, silence_ns: int, clock_ns: Callable[[], int], stop: threading.Event
) -> tuple[websocket.WebSocket, CappedFrameBuffer]:
    """Connect (10 s timeout) with the capped buffer and fragment joining installed; reads time out within 1 s so
    the buffer's silence and stop checks run. Raises what websocket-client raises."""
    ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
    ws.connect(url, timeout=10, suppress_origin=True)  # type: ignore[no-untyped-call]
    buf = CappedFrameBuffer(ws._recv, max_bytes=max_bytes, silence_ns=silence_ns, clock_ns=clock_ns, stop=stop)
    ws.frame_buffer = buf
    forget_fragments(ws)
    ws.settimeout(min(1.0, silence_ns / 1e9))
    return ws, buf


def forget_fragments(ws: websocket.WebSocket) -> None:
    """Start joining fragments afresh (after a refused message, whose first fragments were joined)."""
    ws.cont_frame = Fragments(False, True)


def close_socket(ws: websocket.WebSocket) -> None:
    """Close, then shut the socket down: close() skips a connection the server already closed (it answered the
    close frame), leaving its socket open."""
    with contextlib.suppress(Exception):  # closing a broken socket may fail; it is gone either way
        ws.close(timeout=1)
    ws.shutdown()  # type: ignore[no-untyped-call]
