"""The one home of Binance's websocket control messages as the feed speaks them: SUBSCRIBE, UNSUBSCRIBE and
LIST_SUBSCRIPTIONS requests in chunks, their replies, the pace at which they may be sent, and the one-line
description of a connection's failure. Pure: no I/O (the clock is injected)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import websocket

__all__ = [
    "MESSAGES_PER_S",
    "SUBSCRIBE_CHUNK",
    "ControlError",
    "Pacer",
    "Reply",
    "chunks",
    "describe",
    "parse_reply",
    "request",
]

# Binance counts every incoming message (pongs too) against 5 per second per connection and closes a connection
# that sends more; 3 leaves room for the pongs websocket-client sends on its own.
MESSAGES_PER_S = 3
SUBSCRIBE_CHUNK = 100  # stream names per SUBSCRIBE/UNSUBSCRIBE message
_MAX_CONTROL_CHARS = 1 << 20  # a reply listing 1024 streams is ~30 KB; data frames are never parsed here


class ControlError(Exception):
    """A control request failed: an error reply, no reply in time, or subscriptions that would not take."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to request `id`: its `result`, or `error` ("code -1: msg") when the server refused it."""

    id: int
    result: Any
    error: str | None


def request(request_id: int, method: str, params: Sequence[str] = ()) -> str:
    """The JSON text of a request (`params` left out when empty, as LIST_SUBSCRIPTIONS wants)."""
    body: dict[str, Any] = {"method": method, "id": request_id}
    if params:
        body["params"] = list(params)
    return orjson.dumps(body).decode()


def chunks(streams: Sequence[str], size: int = SUBSCRIBE_CHUNK) -> Iterator[list[str]]:
    """`streams` in lists of at most `size`."""
    for i in range(0, len(streams), size):
        yield list(streams[i : i + size])


def parse_reply(raw: str) -> Reply | None:
    """The reply in `raw` (`{"result": .., "id": n}` or `{"error": {..}, "id": n}`), or None for anything else."""
    if len(raw) > _MAX_CONTROL_CHARS or raw.startswith('{"stream":'):
        return None
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or type(msg.get("id")) is not int or not ("result" in msg or "error" in msg):
        return None
    err = msg.get("error")
    if err is None:
        return Reply(msg["id"], msg.get("result"), None)
    if isinstance(err, dict):
        return Reply(msg["id"], None, f"code {err.get('code')}: {err.get('msg')}")
    return Reply(msg["id"], None, str(err))


class Pacer:
    """At most `per_s` messages in any 1-second window: `delay()` is how long to wait before the next one."""

    def __init__(self, per_s: int = MESSAGES_PER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_s = per_s
        self._clock = clock
        self._sent: collections.deque[float] = collections.deque()

    def delay(self) -> float:
        """Seconds until one more message may go (0.0: now)."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        if len(self._sent) < self._per_s:
            return 0.0
        return self._sent[0] + 1.0 - now + 0.01  # a margin: the server's clock starts when the message arrives

    def sent(self) -> None:
        """Count a message sent now."""
        self._sent.append(self._clock())


def describe(exc: BaseException) -> str:
    """One line for a connection failure. A refused handshake reads "HTTP 414 Request-URI Too Long", followed by
    the server's own `msg` in parentheses when its body has one (Binance's JSON errors do); websocket-client's own
    text would carry every response header."""
    if isinstance(exc, websocket.WebSocketBadStatusException):
        text = f"HTTP {exc.status_code} {exc.status_message or ''}".rstrip()
        msg = _body_msg(exc.resp_body)
        if msg:
            text += f" ({msg})"
    else:
        text = str(exc).split(" -+-+- ", 1)[0].strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _body_msg(body: bytes | None) -> str | None:
    try:
        doc = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        return None
    msg = doc.get("msg") if isinstance(doc, dict) else None
    return str(msg)[:120] if msg else None
