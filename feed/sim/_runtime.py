"""Mutable run-time state of a server: traffic counters and the faults currently switched on.

Only the event loop thread touches these objects; other threads go through ``SimulatorThread``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from feed.sim._faults import FaultConfig, FaultKind
from feed.sim._symbols import derive_rng

logger = logging.getLogger(__name__)

ALL_STREAMS = "*"


@dataclass(slots=True)
class Stats:
    """Counters reported by ``GET /control/stats``."""

    connections: int = 0
    connections_total: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy: frames sent per stream, connections (current and total), faults."""
        return {
            "connections": self.connections,
            "connections_total": self.connections_total,
            "frames_total": sum(self.frames.values()),
            "frames": dict(self.frames),
            "faults": {kind.value: self.faults[kind.value] for kind in FaultKind},
        }


class FaultState:
    """Faults in force now: per-frame fractions, delay, periodic drop/stall and running stalls."""

    def __init__(self, config: FaultConfig, *, seed: int) -> None:
        self.rng = derive_rng(seed, "faults")
        self.malformed = config.malformed_fraction
        self.crossed = config.crossed_fraction
        self.one_sided = config.one_sided_fraction
        self.delay_ms = config.delay_ms
        self.drop_every_s = config.drop_every_s
        self.stall_every_s = config.stall_every_s
        self.stall_for_s = config.stall_for_s
        # stream name (or ALL_STREAMS) -> loop time at which the stall ends
        self.stalls: dict[str, float] = {}

    @property
    def book_faults_on(self) -> bool:
        """True when some frames must be rendered malformed, crossed or one-sided."""
        return self.malformed > 0 or self.crossed > 0 or self.one_sided > 0

    def stall(self, stream: str | None, seconds: float, *, now: float) -> None:
        """Silence ``stream`` (all streams if None) until ``now + seconds``, sockets staying open."""
        self.stalls[stream or ALL_STREAMS] = now + seconds
        logger.warning("injected stall: stream=%s seconds=%.3f", stream or ALL_STREAMS, seconds)

    def is_stalled(self, stream: str, now: float) -> bool:
        """True while ``stream`` (or every stream) is stalled; expired stalls are forgotten."""
        for key in (stream, ALL_STREAMS):
            until = self.stalls.get(key)
            if until is not None:
                if now < until:
                    return True
                del self.stalls[key]
        return False

    def reset(self) -> None:
        """Switch every fault off."""
        self.malformed = self.crossed = self.one_sided = self.delay_ms = 0.0
        self.drop_every_s = self.stall_every_s = None
        self.stalls.clear()
