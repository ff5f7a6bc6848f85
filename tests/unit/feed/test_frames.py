"""feed.frames, through StreamClient against a raw in-test websocket server on loopback: the size cap covers a
whole (fragmented) message, an oversized one is refused through on_reject without being buffered, and a message
that never completes is timed out by the silence watchdog."""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from feed.stream import StreamClient
from models.settings import ReconnectPolicy
from tests.services import wait_for

pytestmark = pytest.mark.unit

TEXT, CONT = 0x1, 0x0
STREAM = "btcusdt@depth20"
CAP = 4096


def _frame(payload: bytes, *, opcode: int = TEXT, fin: bool = True, length: int | None = None) -> bytes:
    """A server (unmasked) frame; `length` overrides the announced payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def _book(luid: int) -> bytes:
    return b'{"stream":"%s","data":{"lastUpdateId":%d,"bids":[],"asks":[]}}' % (STREAM.encode(), luid)


Script = Callable[[socket.socket], None]


class _RawServer:
    """Accepts websocket handshakes; connection i runs scripts[min(i, last)], then stays open until closed."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            script = self.scripts[min(len(self.conns), len(self.scripts) - 1)]
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, script), daemon=True).start()

    def _serve(self, conn: socket.socket, script: Script) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            script(conn)
            while not self.closing.is_set() and conn.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.closing.set()
        self.sock.close()
        for c in self.conns:
            c.close()


@dataclass
class _Run:
    frames: list[str] = field(default_factory=list)
    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    gaps: list[tuple[str, int, int, str]] = field(default_factory=list)


Feed = Callable[..., tuple[StreamClient, _Run]]


@pytest.fixture
def feed() -> Iterator[Feed]:
    started: list[tuple[threading.Event, threading.Thread, _RawServer]] = []

    def start(scripts: list[Script], **policy: Any) -> tuple[StreamClient, _Run]:
        server = _RawServer(scripts)
        out = _Run()
        client = StreamClient(
            f"ws://127.0.0.1:{server.port}/stream?streams={STREAM}",
            on_frame=lambda ns, raw: out.frames.append(raw),
            on_gap=lambda *g: out.gaps.append(g),
            on_reject=lambda *r: out.rejects.append(r),
            policy=replace(ReconnectPolicy.default(), **{"silence_timeout_s": 1.0, **policy}),
            max_frame_bytes=CAP,
        )
        stop = threading.Event()
        thread = threading.Thread(target=client.run, args=(stop,), daemon=True)
        thread.start()
        started.append((stop, thread, server))
        client.stop_event, client.thread = stop, thread  # type: ignore[attr-defined]
        return client, out

    yield start
    for stop, thread, server in started:
        stop.set()
        thread.join(10)
        server.close()


def _send(*chunks: bytes) -> Script:
    return lambda conn: conn.sendall(b"".join(chunks))


def test_a_fragmented_message_over_the_cap_is_refused_and_the_connection_goes_on(feed: Feed) -> None:
    part = b"x" * 3000  # each frame alone is under the cap; the message is not
    client, out = feed(
        [
            _send(
                _frame(b'{"stream":"' + part, fin=False),
                _frame(part, opcode=CONT, fin=False),
                _frame(part + b'"}', opcode=CONT),
                _frame(_book(2)),
            )
        ]
    )
    wait_for(lambda: len(out.frames) == 1, 10, "the next frame")
    assert out.frames == [_book(2).decode()]
    [(_ns, reason, excerpt)] = out.rejects
    assert "9013 bytes" in reason and f"{CAP}-byte" in reason
    assert excerpt == ('{"stream":"' + "x" * 3000)[:1024]
    assert client.pool.reconnects() == 0 and client.stats.rejected == 1


def test_a_frame_announcing_more_than_the_cap_is_discarded_unbuffered_and_reported(feed: Feed) -> None:
    big = b"\xff" + b"y" * 99_999  # invalid UTF-8 in the excerpt is replaced, not fatal
    client, out = feed([_send(_frame(_book(1)), _frame(big), _frame(_book(2)))])
    wait_for(lambda: len(out.frames) == 2, 10, "both small frames")
    [(_ns, reason, excerpt)] = out.rejects
    assert "100000 bytes" in reason
    assert excerpt == "\ufffd" + "y" * 1023
    assert client.pool.reconnects() == 0


def test_a_message_fragmented_into_many_pieces_arrives_whole(feed: Feed) -> None:
    raw = _book(7)
    pieces = [raw[i : i + 1] for i in range(len(raw))]
    frames = [_frame(pieces[0], fin=False)]
    frames += [_frame(p, opcode=CONT, fin=False) for p in pieces[1:-1]]
    frames.append(_frame(pieces[-1], opcode=CONT))
    _client, out = feed([_send(*frames, _frame(_book(8)))])
    wait_for(lambda: len(out.frames) == 2, 10, "the joined message")
    assert out.frames == [raw.decode(), _book(8).decode()]
    assert out.rejects == []


def _trickle_fragments(conn: socket.socket) -> None:
    conn.sendall(_frame(b'{"stream":"', fin=False))
    for _ in range(40):  # a fragment every 0.2 s: the socket never goes quiet, the message never ends
        time.sleep(0.2)
        conn.sendall(_frame(b"z", opcode=CONT, fin=False))


def _trickle_bytes(conn: socket.socket) -> None:
    conn.sendall(_frame(b"", length=500))  # the header only
    for _ in range(40):  # one byte of the announced 500 every 0.2 s
        time.sleep(0.2)
        conn.sendall(b"z")


@pytest.mark.parametrize("trickle", [_trickle_fragments, _trickle_bytes], ids=["fragments", "bytes"])
def test_a_message_that_never_completes_is_timed_out(feed: Feed, trickle: Script) -> None:
    client, out = feed([trickle, _send(_frame(_book(2)))])
    wait_for(lambda: out.frames == [_book(2).decode()], 10, "a reconnect and the next connection's frame")
    assert client.pool.reconnects() >= 1


@pytest.mark.parametrize("trickle", [_trickle_fragments, _trickle_bytes], ids=["fragments", "bytes"])
def test_stop_is_prompt_while_a_message_trickles_in(feed: Feed, trickle: Script) -> None:
    """The silence watchdog would end this connection only after 60 s; stop must not wait for it."""
    started = threading.Event()

    def script(conn: socket.socket) -> None:
        started.set()
        trickle(conn)

    client, out = feed([script], silence_timeout_s=60.0)
    wait_for(started.is_set, 10, "the trickle")
    wait_for(client.pool.connected, 10, "the connection")
    client.stop_event.set()  # type: ignore[attr-defined]
    client.thread.join(5)  # type: ignore[attr-defined]
    assert not client.thread.is_alive()  # type: ignore[attr-defined]
    assert out.frames == [] and client.pool.reconnects() == 0


def test_a_connection_the_server_closed_is_closed_at_once(feed: Feed) -> None:
    """websocket-client's close() does nothing once it has answered the server's close frame: the socket must
    still be closed then, not left to the garbage collector (the next connect is 15 s or more away here)."""
    eof = threading.Event()

    def close_then_wait(conn: socket.socket) -> None:
        conn.sendall(_frame(_book(1)) + _frame(struct.pack("!H", 1000), opcode=0x8))
        while conn.recv(4096):
            pass
        eof.set()

    client, _ = feed([close_then_wait], backoff_base_s=30.0)
    wait_for(lambda: client.pool.reconnects() == 1, 10, "the server's close")
    wait_for(eof.is_set, 5, "the client's socket closed")


def test_many_messages_in_one_read_arrive_in_order(feed: Feed) -> None:
    books = [_book(i) for i in range(1, 201)]
    _client, out = feed([_send(*(_frame(b) for b in books))])  # one write: read back in one or a few reads
    wait_for(lambda: len(out.frames) == 200, 10, "every message")
    assert out.frames == [b.decode() for b in books]


def test_a_ping_is_answered_with_a_pong(feed: Feed) -> None:
    def ping_then_book(conn: socket.socket) -> None:
        conn.sendall(_frame(b"hi", opcode=0x9))
        head = b""
        while len(head) < 2:
            head += conn.recv(64)
        if head[0] == 0x8A:  # FIN + pong (masked: a client's frame)
            conn.sendall(_frame(_book(3)))

    _client, out = feed([ping_then_book])
    wait_for(lambda: out.frames == [_book(3).decode()], 10, "the book sent after the pong")
