"""Binance's market-stream wire protocol as the simulator speaks it: stream names and URL paths, the JSON methods
(SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET/GET_PROPERTY) and their replies, and outgoing data frames.

Pure except ``FrameWriter``. The stream-name grammar is ``models.vocabulary``'s; error codes follow Binance's
documented table: 0 unknown property, 1 invalid value type, 2 invalid request, 3 invalid JSON.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from models.errors import MalformedPayloadError
from models.vocabulary import parse_stream_name

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_EXPECTED = ", ".join(f"`{m}`" for m in METHODS)
_TEXT_FIN = 0x81


@dataclass(frozen=True, slots=True)
class DepthStream:
    """A partial-depth stream the simulator can serve, e.g. ``btcusdt@depth20@100ms``."""

    name: str
    symbol: str
    levels: int
    interval_ms: int


@dataclass(frozen=True, slots=True)
class WsPath:
    """What a websocket URL asks for: combined (``/stream``) or raw (``/ws``) frames, and initial streams."""

    combined: bool
    streams: tuple[str, ...]


def parse_stream(name: str, symbols: Container[str]) -> DepthStream | None:
    """Return the depth stream named ``name`` if ``symbols`` (upper-case) has it, else ``None``.

    Like Binance, names are case-sensitive and lower-case; anything else is a stream nobody publishes. No
    ``@100ms`` suffix (or an explicit ``@1000ms``, as binance-connector sends) means one frame a second.
    """
    try:
        parsed = parse_stream_name(name)
    except MalformedPayloadError:
        return None
    if parsed.symbol not in symbols:
        return None
    return DepthStream(name, parsed.symbol, parsed.depth, parsed.interval_ms)


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


def parse_ws_path(raw_path: str) -> WsPath | None:
    """Parse ``/stream?streams=a/b``, ``/stream``, ``/ws``, ``/ws/a`` or ``/ws/a/b``; ``None`` for other paths.

    Other query parameters (``timeUnit``) are ignored.
    """
    parts = urlsplit(raw_path)
    path = parts.path.rstrip("/") or "/"
    if path == "/stream":
        values = parse_qs(parts.query, keep_blank_values=True).get("streams", [])
        return WsPath(True, _unique([s for v in values for s in v.split("/")]))
    if path == "/ws":
        return WsPath(False, ())
    if path.startswith("/ws/"):
        return WsPath(False, _unique(unquote(path[4:]).split("/")))
    return None


def ws_url(host: str, port: int, streams: Sequence[str] = (), *, combined: bool = True) -> str:
    """URL of a Binance-style endpoint: ``/stream?streams=a/b`` (combined) or ``/ws/a/b`` (raw)."""
    base = f"ws://{host}:{port}"
    if combined:
        return f"{base}/stream?streams={'/'.join(streams)}" if streams else f"{base}/stream"
    return f"{base}/ws/{'/'.join(streams)}" if streams else f"{base}/ws"


@dataclass(frozen=True, slots=True)
class Outcome:
    """Reply text to send, the connection's subscriptions and ``combined`` property afterwards, and what limit
    the request broke, if any (``violation``: a SUBSCRIBE over ``max_streams``)."""

    reply: str
    streams: tuple[str, ...]
    combined: bool
    violation: str | None = None


class _RequestError(Exception):
    def __init__(self, code: int, msg: str, violation: str | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.violation = violation


def _reply(request_id: Any, *, result: Any = None, error: tuple[int, str] | None = None) -> str:
    """``{"result": <result>, "id": <id>}``, or ``{"error": {"code": .., "msg": ..}, "id": <id>}`` (compact)."""
    if error is None:
        return orjson.dumps({"result": result, "id": request_id}).decode()
    return orjson.dumps({"error": {"code": error[0], "msg": error[1]}, "id": request_id}).decode()


def _valid_id(value: Any) -> bool:
    # Binance takes a 64-bit integer, a string of at most 36 characters, or null.
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    return value is None or (isinstance(value, str) and len(value) <= 36)


def _stream_params(request: dict[str, Any]) -> list[str]:
    params = request.get("params", [])
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        raise _RequestError(2, "Invalid request: invalid type: expected a sequence of stream names")
    return params


def _apply(
    request: dict[str, Any], streams: tuple[str, ...], combined: bool, max_streams: int
) -> tuple[Any, tuple[str, ...], bool]:
    method = request.get("method")
    if method is None:
        raise _RequestError(2, "Invalid request: missing field `method`")
    if method not in METHODS:
        raise _RequestError(2, f"Invalid request: unknown variant `{method}`, expected one of {_EXPECTED}")
    if method == "SUBSCRIBE":
        merged = tuple(dict.fromkeys((*streams, *_stream_params(request))))
        if len(merged) > max_streams:
            violation = f"SUBSCRIBE to {len(merged)} streams > {max_streams} per connection, answered an error"
            msg = f"Invalid request: too many streams, at most {max_streams} per connection"
            raise _RequestError(2, msg, violation)
        return None, merged, combined
    if method == "UNSUBSCRIBE":
        removed = set(_stream_params(request))
        return None, tuple(s for s in streams if s not in removed), combined
    if method == "LIST_SUBSCRIPTIONS":
        return list(streams), streams, combined
    params = request.get("params", [])
    if not isinstance(params, list) or not params or not isinstance(params[0], str):
        raise _RequestError(2, "Invalid request: property name must be a string")
    if params[0] != "combined":
        raise _RequestError(0, "Unknown property")
    if method == "GET_PROPERTY":
        return combined, streams, combined
    if len(params) != 2 or not isinstance(params[1], bool):
        raise _RequestError(1, "Invalid value type: expected Boolean")
    return None, streams, params[1]


def handle_request(raw: str | bytes, *, streams: Sequence[str], combined: bool, max_streams: int) -> Outcome:
    """Answer one client message; the subscription state only changes on success."""
    current = tuple(streams)
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Outcome(_reply(None, error=(3, f"Invalid JSON: {exc}")), current, combined)
    if not isinstance(request, dict):
        return Outcome(_reply(None, error=(2, "Invalid request: expected a JSON object")), current, combined)
    request_id = request.get("id")
    if not _valid_id(request_id):
        msg = "Invalid request: request ID must be an unsigned integer or a string of at most 36 characters"
        return Outcome(_reply(None, error=(2, msg)), current, combined)
    try:
        result, new_streams, new_combined = _apply(request, current, combined, max_streams)
    except _RequestError as exc:
        return Outcome(_reply(request_id, error=(exc.code, exc.msg)), current, combined, exc.violation)
    return Outcome(_reply(request_id, result=result), new_streams, new_combined)


def _frame_header(length: int) -> bytes:
    """The header of an unmasked final text frame carrying ``length`` payload bytes (RFC 6455)."""
    if length < 126:
        return bytes((_TEXT_FIN, length))
    if length < 65536:
        return bytes((_TEXT_FIN, 126)) + length.to_bytes(2, "big")
    return bytes((_TEXT_FIN, 127)) + length.to_bytes(8, "big")


def frame(*parts: bytes) -> bytes:
    """One server-to-client text frame (header included) whose payload is ``parts`` joined: identical bytes for
    every connection, so a frame shared by many sessions is built once (see ``FrameWriter``)."""
    return b"".join((_frame_header(sum(map(len, parts))), *parts))


class FrameWriter:
    """Writes batches of data frames to one connection at once, honouring the transport's backpressure.

    Going through ``Connection.send`` costs a flow-control round per frame, which caps a Python server far below
    30k frames/s; here a batch is framed by hand (FIN + text opcode, unmasked because server to client, no
    extension: the server runs with ``compression=None``) and written with one ``transport.write``. Everything
    runs on the event loop thread, so these writes never interleave inside websockets' own frames.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection

    @property
    def is_open(self) -> bool:
        """True while data frames may still be sent (not closing, not closed)."""
        return self._connection.protocol.state is State.OPEN

    def write_framed(self, data: bytes) -> bool:
        """Write frames already built by ``frame``; False (nothing written) once the connection is closing."""
        if not self.is_open:
            return False
        self._connection.transport.write(data)
        return True

    def write(self, frames: Sequence[bytes]) -> bool:
        """Frame and write ``frames`` now; returns False (and writes nothing) once the connection is closing."""
        if not self.is_open:
            return False
        if not frames:
            return True
        parts: list[bytes] = []
        for frame in frames:
            parts.append(_frame_header(len(frame)))
            parts.append(frame)
        self._connection.transport.write(b"".join(parts))
        return True

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above websockets' ``write_limit`` (its flow control)."""
        if self._connection.transport.get_write_buffer_size() > 0:
            await self._connection.drain()
