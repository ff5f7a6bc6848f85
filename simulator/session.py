"""One client connection as the server and feeders see it (``Session``), the connection rules (``ServerConfig``) and
the counters of ``GET /control/stats`` (``Stats``). Lives on the event loop thread only.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection

from models.errors import ConfigError
from simulator.faults import FaultKind, FaultState
from simulator.limits import MessageRate, Violation
from simulator.protocol import FrameWriter

_SLOW_CLIENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Binance connection rules shared by the simulator and the replayer (seconds unless named otherwise).

    ``ping_interval_s`` / ``pong_timeout_s`` of ``None`` disable keepalive; ``max_lifetime_s`` of ``None``
    keeps connections forever (each connection's own lifetime, from its handshake). The ``serverShutdown``
    event goes out ``shutdown_notice_s`` before the close. ``max_connections_per_5m`` of ``None`` accepts any
    number of new connections. A client that lets more than ``slow_client_bytes`` wait in the server's buffer
    misses frames until it catches up (they are counted as skipped, not buffered without bound).
    """

    host: str = "127.0.0.1"
    port: int = 0
    ping_interval_s: float | None = 20.0
    pong_timeout_s: float | None = 60.0
    max_lifetime_s: float | None = 24 * 3600.0
    shutdown_notice_s: float = 0.0
    max_streams: int = 1024
    max_messages_per_s: int = 5
    max_connections_per_5m: int | None = 300
    max_uri_bytes: int = 8192
    slow_client_bytes: int = _SLOW_CLIENT_BYTES

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
        if self.max_connections_per_5m is not None and self.max_connections_per_5m < 1:
            raise ConfigError(f"max_connections_per_5m must be at least 1, got {self.max_connections_per_5m}")
        if self.slow_client_bytes < 1:
            raise ConfigError(f"slow_client_bytes must be positive, got {self.slow_client_bytes}")
        if self.max_uri_bytes < 16:
            raise ConfigError(f"max_uri_bytes must be at least 16, got {self.max_uri_bytes}")


@dataclass(slots=True)
class Stats:
    """Counters reported by ``GET /control/stats``."""

    connections: int = 0
    connections_total: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    frames_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: frames sent per stream, connections (current and total), faults and limit violations
        per kind, frames not sent to clients too slow to read them (``frames_skipped``)."""
        return {
            "connections": self.connections,
            "connections_total": self.connections_total,
            "frames_total": sum(self.frames.values()),
            "frames": dict(self.frames),
            "frames_skipped": self.frames_skipped,
            "faults": {kind.value: self.faults[kind.value] for kind in FaultKind},
            "violations": {kind.value: self.violations[kind.value] for kind in Violation},
        }


class Session:
    """One client connection: its subscriptions, ``combined`` property, writer and message-rate window.

    A client that does not read falls behind: past ``slow_client_bytes`` waiting in its socket buffer, shared
    frames are skipped for it (counted in ``frames_skipped``) rather than buffered without bound.
    """

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
        self.rate = MessageRate(5)
        self.slow_client_bytes = _SLOW_CLIENT_BYTES
        self.closing: asyncio.Task[None] | None = None

    def allow_message(self, now: float, per_second: int) -> bool:
        """Count one incoming message; False when more than ``per_second`` came within the last second."""
        self.rate.limit = per_second
        return self.rate.allow(now)

    def can_send(self) -> bool:
        """True while the connection is open and its client keeps up (socket buffer below the slow-client mark)."""
        return self.writer.is_open and self.connection.transport.get_write_buffer_size() < self.slow_client_bytes

    def send_framed(self, data: bytes, count: int) -> None:
        """Write ``count`` already framed data frames (``protocol.frame``), or ``delay_ms`` later while the delay
        fault is on."""
        delay_ms = self._faults.settings.delay_ms
        if delay_ms > 0:
            self._stats.faults[FaultKind.DELAY.value] += count
            asyncio.get_running_loop().call_later(delay_ms / 1000.0, self.writer.write_framed, data)
        else:
            self.writer.write_framed(data)

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
