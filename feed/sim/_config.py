"""Typed configuration of the simulator and the replayer (frozen values, validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from feed.sim._faults import FaultConfig
from feed.sim._symbols import DEFAULT_SYMBOLS


class SimConfigError(ValueError):
    """A simulator or replayer setting is out of range (message is one readable line)."""


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
            raise SimConfigError(f"port must be in 0..65535, got {self.port}")
        for name in ("ping_interval_s", "pong_timeout_s", "max_lifetime_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SimConfigError(f"{name} must be positive, got {value}")
        if self.shutdown_notice_s < 0:
            raise SimConfigError(f"shutdown_notice_s must be >= 0, got {self.shutdown_notice_s}")
        if self.max_streams < 1 or self.max_messages_per_s < 1:
            raise SimConfigError("max_streams and max_messages_per_s must be at least 1")


def _check_faults(faults: FaultConfig) -> None:
    for name in ("malformed_fraction", "crossed_fraction", "one_sided_fraction"):
        value = getattr(faults, name)
        if not 0.0 <= value <= 1.0:
            raise SimConfigError(f"{name} must be in [0, 1], got {value}")
    if faults.delay_ms < 0:
        raise SimConfigError(f"delay_ms must be >= 0, got {faults.delay_ms}")
    for name in ("drop_every_s", "stall_every_s"):
        value = getattr(faults, name)
        if value is not None and value <= 0:
            raise SimConfigError(f"{name} must be positive, got {value}")
    if faults.stall_for_s <= 0:
        raise SimConfigError(f"stall_for_s must be positive, got {faults.stall_for_s}")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Simulator settings: market (symbols, seed, rate), connection rules and start-up faults.

    ``random_symbols`` > 0 replaces ``symbols`` with that many generated names. ``rate`` (frames/s per
    connection, spread round-robin over its streams) replaces the 1000 ms / 100 ms stream cadences.
    """

    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    random_symbols: int = 0
    seed: int = 0
    rate: float | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if self.random_symbols < 0:
            raise SimConfigError(f"random_symbols must be >= 0, got {self.random_symbols}")
        if not self.symbols and self.random_symbols == 0:
            raise SimConfigError("at least one symbol is needed")
        if self.rate is not None and not self.rate > 0:
            raise SimConfigError(f"rate must be positive, got {self.rate}")
        _check_faults(self.faults)


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Replayer settings: the recording, the pace (``speed`` times the original, or ``fast``) and the rules."""

    path: Path
    speed: float = 1.0
    fast: bool = False
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise SimConfigError(f"speed must be positive, got {self.speed}")
