"""The Binance-compatible websocket server: URL paths, JSON methods, limits, keepalive, lifetime, periodic faults.

Owns connections and connection rules only: what data to send comes from a ``Feeder`` (simulated market or
replayed recording), what HTTP requests answer comes from ``simulator.control.HttpApi``. Every object here lives
on the event loop thread; other threads go through ``simulator.runtime.ServerThread``.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from models.errors import ConfigError
from simulator.faults import FaultKind, FaultState
from simulator.protocol import FrameWriter, handle_request, parse_ws_path

logger = logging.getLogger(__name__)

HttpRoutes = Callable[[str, Mapping[str, str]], "tuple[int, Any] | None"]
"""(path, query) -> (status, JSON body), or None when the path is not an HTTP route."""

_WRITE_LIMIT = 256 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Binance connection rules shared by the simulator and the replayer (seconds unless named otherwise).

    ``ping_interval_s`` / ``pong_timeout_s`` of ``None`` disable keepalive; ``max_lifetime_s`` of ``None``
    keeps connections forever. The ``serverShutdown`` event goes out ``shutdown_notice_s`` before the close.
    """

    host: str = "127.0.0.1"
    port: int = 0
    ping_interval_s: float | None = 20.0
    pong_timeout_s: float | None = 60.0
    max_lifetime_s: float | None = 24 * 3600.0
    shutdown_notice_s: float = 0.0
    max_streams: int = 1024
    max_messages_per_s: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        for name in ("ping_interval_s", "pong_timeout_s", "max_lifetime_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.shutdown_notice_s < 0:
            raise ConfigError(f"shutdown_notice_s must be >= 0, got {self.shutdown_notice_s}")
        if self.max_streams < 1 or self.max_messages_per_s < 1:
            raise ConfigError("max_streams and max_messages_per_s must be at least 1")


@dataclass(slots=True)
class Stats:
    """Counters reported by ``GET /control/stats``."""

    connections: int = 0
    connections_total: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: frames sent per stream, connections (current and total), faults per kind."""
        return {
            "connections": self.connections,
            "connections_total": self.connections_total,
            "frames_total": sum(self.frames.values()),
            "frames": dict(self.frames),
            "faults": {kind.value: self.faults[kind.value] for kind in FaultKind},
        }


class Session:
    """One client connection: its subscriptions, ``combined`` property, writer and message-rate window."""

    def __init__(
        self,
        connection: ServerConnection,
        *,
        combined: bool,
        streams: tuple[str, ...],
        faults: FaultState,
        stats: Stats,
    ) -> None:
        self.connection = connection
        self.combined = combined
        self.streams = streams
        self.writer = FrameWriter(connection)
        self._faults = faults
        self._stats = stats
        self.changed = asyncio.Event()
        self.changed.set()
        self._message_times: collections.deque[float] = collections.deque()

    def allow_message(self, now: float, per_second: int) -> bool:
        """Count one incoming message; False when more than ``per_second`` came within the last second."""
        times = self._message_times
        times.append(now)
        while times and times[0] <= now - 1.0:
            times.popleft()
        return len(times) <= per_second

    def emit(self, frames: list[bytes]) -> None:
        """Send data frames now, or ``delay_ms`` later while the delay fault is on (order is kept)."""
        if not frames:
            return
        delay_ms = self._faults.settings.delay_ms
        if delay_ms > 0:
            self._stats.faults[FaultKind.DELAY.value] += len(frames)
            asyncio.get_running_loop().call_later(delay_ms / 1000.0, self.writer.write, frames)
        else:
            self.writer.write(frames)

    async def wait_changed(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking early when the subscriptions change."""
        if timeout <= 0:
            await asyncio.sleep(0)
            return
        try:
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        except TimeoutError:
            pass


class Feeder(Protocol):
    """Produces the data frames of one session until it closes (returns or gets cancelled)."""

    async def run(self, session: Session) -> None: ...


def _json_response(status: int, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers(
        [
            ("Content-Type", "application/json;charset=UTF-8"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


class StreamServer:
    """Serves ``/ws``, ``/ws/<streams>``, ``/stream?streams=..`` plus the HTTP routes on one port."""

    def __init__(self, config: ServerConfig, feeder: Feeder, *, faults: FaultState, stats: Stats) -> None:
        self.config = config
        self.feeder = feeder
        self.faults = faults
        self.stats = stats
        self.http_routes: HttpRoutes | None = None
        self._sessions: set[Session] = set()
        self._server: Server | None = None
        self._periodic: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections; also starts periodic drop/stall faults if configured."""
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.pong_timeout_s,
            close_timeout=2,
            max_size=2**20,
            write_limit=_WRITE_LIMIT,
        )
        self.refresh_periodic()

    async def stop(self) -> None:
        """Stop periodic faults, close every connection (1001, cut after 0.5 s) and the listening socket."""
        for task in self._periodic:
            task.cancel()
        if self._server is not None:
            self._server.close()
            try:
                async with asyncio.timeout(0.5):
                    await self._server.wait_closed()
            except TimeoutError:  # clients that do not answer the close frame are cut off
                for session in list(self._sessions):
                    session.connection.transport.abort()
                await self._server.wait_closed()

    def drop_all(self) -> int:
        """Abort every connection at once, without close frames (a network failure); returns how many."""
        dropped = 0
        for session in list(self._sessions):
            session.connection.transport.abort()
            dropped += 1
        self.stats.faults[FaultKind.DROP.value] += dropped
        logger.warning("injected drop: aborted %d connection(s)", dropped)
        return dropped

    def stall_all(self) -> None:
        """Silence every stream for ``stall_for_s`` (the periodic stall)."""
        self.stats.faults[FaultKind.STALL.value] += 1
        self.faults.stall(None, self.faults.settings.stall_for_s, now=asyncio.get_running_loop().time())

    def refresh_periodic(self) -> None:
        """(Re)start the periodic drop and stall tasks after their settings changed."""
        for task in self._periodic:
            task.cancel()
        settings = self.faults.settings
        self._periodic = [
            asyncio.create_task(self._every(every_s, action))
            for every_s, action in ((settings.drop_every_s, self.drop_all), (settings.stall_every_s, self.stall_all))
            if every_s is not None
        ]

    @staticmethod
    async def _every(seconds: float, action: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(seconds)
            action()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if self.http_routes is not None:
            routed = self.http_routes(path, dict(parse_qsl(query)))
            if routed is not None:
                return _json_response(*routed)
        ws_path = parse_ws_path(request.path)
        if ws_path is None:
            return _json_response(404, {"code": -1, "msg": f"Not found: {path}"})
        if len(ws_path.streams) > self.config.max_streams:
            msg = f"Too many streams: {len(ws_path.streams)} > {self.config.max_streams} per connection"
            return _json_response(400, {"code": -1, "msg": msg})
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None  # the handshake is done
        ws_path = parse_ws_path(connection.request.path)
        assert ws_path is not None  # checked by _process_request
        session = Session(
            connection, combined=ws_path.combined, streams=ws_path.streams, faults=self.faults, stats=self.stats
        )
        self._sessions.add(session)
        self.stats.connections += 1
        self.stats.connections_total += 1
        logger.info("client connected: %s %s", connection.remote_address, connection.request.path)
        tasks = [asyncio.create_task(self.feeder.run(session))]
        if self.config.max_lifetime_s is not None:
            tasks.append(asyncio.create_task(self._expire(session, self.config.max_lifetime_s)))
        try:
            await self._read(session)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, ConnectionClosed):
                    logger.error("session task failed", exc_info=result)
            self._sessions.discard(session)
            self.stats.connections -= 1
            logger.info("client gone: %s code=%s", connection.remote_address, connection.close_code)

    async def _read(self, session: Session) -> None:
        connection, loop = session.connection, asyncio.get_running_loop()
        async for message in connection:
            if not session.allow_message(loop.time(), self.config.max_messages_per_s):
                logger.warning("closing %s: too many messages per second", connection.remote_address)
                await connection.close(CloseCode.POLICY_VIOLATION, "Too many requests")
                return
            outcome = handle_request(
                message, streams=session.streams, combined=session.combined, max_streams=self.config.max_streams
            )
            if outcome.streams != session.streams or outcome.combined != session.combined:
                session.streams, session.combined = outcome.streams, outcome.combined
                session.changed.set()
            await connection.send(outcome.reply)

    async def _expire(self, session: Session, lifetime_s: float) -> None:
        notice_s = min(self.config.shutdown_notice_s, lifetime_s)
        await asyncio.sleep(lifetime_s - notice_s)
        event = orjson.dumps({"e": "serverShutdown", "E": time.time_ns() // 1_000_000}).decode()
        await session.connection.send(event)
        logger.info("connection lifetime over: %s", session.connection.remote_address)
        await asyncio.sleep(notice_s)
        await session.connection.close(CloseCode.GOING_AWAY, "connection lifetime exceeded")
