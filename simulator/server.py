"""The Binance-compatible websocket server: URL paths, JSON methods, limits, keepalive, lifetime, periodic faults.

Limits as Binance's (``simulator.limits``): at most ``max_streams`` per connection (400 at the handshake, an
error reply to a SUBSCRIBE), ``max_messages_per_s`` incoming messages (close 1008), ``max_connections_per_5m``
new connections per client IP (429), request URIs over ``max_uri_bytes`` (414).

Owns connections and connection rules only: what data to send comes from a ``Feeder`` (simulated market or
replayed recording), what HTTP requests answer comes from ``simulator.control.HttpApi``. Every object here lives
on the event loop thread; other threads go through ``simulator.runtime.ServerThread``.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from simulator.faults import FaultKind, FaultState
from simulator.limits import (
    ConnectionHooks,
    ConnectionRate,
    LimitedConnection,
    Violation,
    connection_class,
    record_violation,
)
from simulator.protocol import handle_request, parse_ws_path
from simulator.session import Feeder, ServerConfig, Session, Stats

logger = logging.getLogger(__name__)

HttpRoutes = Callable[[str, Mapping[str, str]], "tuple[int, Any] | None"]
"""(path, query) -> (status, JSON body), or None when the path is not an HTTP route."""

_WRITE_LIMIT = 256 * 1024


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
        self._connection_rate = ConnectionRate(config.max_connections_per_5m)
        self._hooks = ConnectionHooks(on_uri_too_long=self._uri_too_long)

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
            create_connection=connection_class(self._hooks),
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

    def _violation(self, kind: Violation, connection: ServerConnection, detail: str) -> None:
        record_violation(self.stats.violations, kind, connection.remote_address, detail)

    def _uri_too_long(self, connection: ServerConnection) -> None:
        """websockets itself answered 414: the request line did not fit its 8 KiB line limit."""
        self._violation(Violation.URI_TOO_LONG, connection, "request line over 8192 bytes, answered 414")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        config = self.config
        if len(request.path) > config.max_uri_bytes:
            detail = f"URI of {len(request.path)} bytes > {config.max_uri_bytes}"
            self._violation(Violation.URI_TOO_LONG, connection, detail + ", answered 414")
            return _json_response(414, {"code": -1, "msg": f"Request-URI Too Long: {detail}"})
        path, _, query = request.path.partition("?")
        if self.http_routes is not None:
            routed = self.http_routes(path, dict(parse_qsl(query)))
            if routed is not None:
                return _json_response(*routed)
        ws_path = parse_ws_path(request.path)
        if ws_path is None:
            return _json_response(404, {"code": -1, "msg": f"Not found: {path}"})
        if len(ws_path.streams) > config.max_streams:
            msg = f"Too many streams: {len(ws_path.streams)} > {config.max_streams} per connection"
            self._violation(Violation.STREAMS_PER_CONNECTION, connection, msg + " in the URL, answered 400")
            return _json_response(400, {"code": -1, "msg": msg})
        ip = str(connection.remote_address[0]) if connection.remote_address else "?"
        if not self._connection_rate.allow(ip, asyncio.get_running_loop().time()):
            msg = f"Too many new connections: at most {config.max_connections_per_5m} per 5 minutes per IP"
            self._violation(Violation.CONNECTION_RATE, connection, msg + ", answered 429")
            return _json_response(429, {"code": -1003, "msg": msg})
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None  # the handshake is done
        ws_path = parse_ws_path(connection.request.path)
        assert ws_path is not None  # checked by _process_request
        session = Session(
            connection, combined=ws_path.combined, streams=ws_path.streams, faults=self.faults, stats=self.stats
        )
        session.rate.limit = self.config.max_messages_per_s
        session.slow_client_bytes = self.config.slow_client_bytes
        if isinstance(connection, LimitedConnection):
            connection.on_control_frame = lambda: self._control_frame(session)
            ping_s = self.config.ping_interval_s
            connection.count_answers = ping_s is None or ping_s >= 1.0
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
            if session.closing is not None:  # not cancelled: a close handshake cut short would leave the socket
                await asyncio.wait([session.closing])
            self._sessions.discard(session)
            self.stats.connections -= 1
            logger.info("client gone: %s code=%s", connection.remote_address, connection.close_code)

    def _too_many_messages(self, session: Session, what: str) -> None:
        detail = f"more than {session.rate.limit} incoming messages within 1 s ({what}), closing 1008"
        self._violation(Violation.MESSAGES_PER_SECOND, session.connection, detail)

    def _control_frame(self, session: Session) -> None:
        """A ping or an unsolicited pong arrived: it counts against the message rate like a text message."""
        if session.closing is None and not session.rate.allow(asyncio.get_running_loop().time()):
            self._too_many_messages(session, "ping/pong")
            closing = session.connection.close(CloseCode.POLICY_VIOLATION, "Too many requests")
            session.closing = asyncio.ensure_future(closing)

    async def _read(self, session: Session) -> None:
        connection, loop = session.connection, asyncio.get_running_loop()
        async for message in connection:
            if session.closing is not None:
                return
            if not session.rate.allow(loop.time()):
                self._too_many_messages(session, "text")
                await connection.close(CloseCode.POLICY_VIOLATION, "Too many requests")
                return
            outcome = handle_request(
                message, streams=session.streams, combined=session.combined, max_streams=self.config.max_streams
            )
            if outcome.violation is not None:
                self._violation(Violation.STREAMS_PER_CONNECTION, connection, outcome.violation)
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
