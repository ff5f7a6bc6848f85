"""Binance's connection limits as the simulator enforces them: message rate per connection, new connections per
client IP, and the record of every violation (a WARNING with ``limit violation:`` and a counter per kind).

Everything here lives on the event loop thread. ``LimitedConnection`` only observes frames websockets handles
itself (pings, pongs, a request line too long) and reports them; the server decides what to do.
"""

from __future__ import annotations

import collections
import logging
from collections import Counter
from collections.abc import Callable, Container
from enum import StrEnum
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import RequestLineTooLong
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

logger = logging.getLogger(__name__)


class Violation(StrEnum):
    """Limits a client can break (also the keys of ``violations`` in ``GET /control/stats``)."""

    STREAMS_PER_CONNECTION = "streams_per_connection"
    MESSAGES_PER_SECOND = "messages_per_second"
    CONNECTION_RATE = "connection_rate"
    URI_TOO_LONG = "uri_too_long"


def record_violation(counter: Counter[str], kind: Violation, client: object, detail: str) -> None:
    """Count one violation of ``kind`` and log it at WARNING (``limit violation: <kind> by <client>: <detail>``)."""
    counter[kind.value] += 1
    logger.warning("limit violation: %s by %s: %s", kind.value, client, detail)


class MessageRate:
    """Incoming messages of one connection within the last second (a sliding window)."""

    __slots__ = ("_times", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._times: collections.deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        """Count one message at loop time ``now``; False when more than ``limit`` came within the last second."""
        times = self._times
        times.append(now)
        while times and times[0] <= now - 1.0:
            times.popleft()
        return len(times) <= self.limit


class ConnectionRate:
    """Websocket connections accepted per client IP within a sliding window (Binance: 300 per 5 minutes).

    Only accepted connections count: a client answered 429 does not push its own window further.
    ``limit`` of ``None`` accepts everything.
    """

    def __init__(self, limit: int | None, *, window_s: float = 300.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._accepted: dict[str, collections.deque[float]] = {}

    def allow(self, ip: str, now: float) -> bool:
        """Count a new connection from ``ip`` at loop time ``now`` and return True, or False when over the limit."""
        if self.limit is None:
            return True
        times = self._accepted.setdefault(ip, collections.deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


def _counted(event: Frame, pending_pings: Container[bytes], *, answers: bool) -> bool:
    """A ping, or a pong (one answering the server's own ping only with ``answers``)."""
    if event.opcode is Opcode.PING:
        return True
    return event.opcode is Opcode.PONG and (answers or bytes(event.data) not in pending_pings)


class ConnectionHooks:
    """Callbacks a ``LimitedConnection`` reports to; set per connection once its session exists."""

    def __init__(self, on_uri_too_long: Callable[[ServerConnection], None]) -> None:
        self.on_uri_too_long = on_uri_too_long


class LimitedConnection(ServerConnection):
    """A ``ServerConnection`` that reports what websockets answers on its own: pings and pongs (Binance counts
    both as incoming messages) and request lines too long for it (already answered 414).

    ``count_answers`` False leaves out the pongs that answer the server's own pings: a test server pinging more
    than once a second would otherwise close every client that answers them (Binance pings every 20 s).
    """

    hooks: ConnectionHooks | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_control_frame: Callable[[], None] | None = None
        self.count_answers = True

    def process_event(self, event: Event) -> None:
        """Report a ping or an unsolicited pong, then let websockets handle the event."""
        if (
            isinstance(event, Frame)
            and self.on_control_frame is not None
            and _counted(event, self.pending_pings, answers=self.count_answers)
        ):
            self.on_control_frame()
        super().process_event(event)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """The opening handshake; reports a request line websockets refused as too long (its 414)."""
        await super().handshake(*args, **kwargs)
        if isinstance(self.protocol.handshake_exc, RequestLineTooLong) and self.hooks is not None:
            self.hooks.on_uri_too_long(self)


def connection_class(hooks: ConnectionHooks) -> type[LimitedConnection]:
    """A ``LimitedConnection`` subclass bound to one server's ``hooks`` (websockets takes a class, not a factory)."""
    return type("SimulatorConnection", (LimitedConnection,), {"hooks": hooks})
