"""Faults the simulator injects: their settings (one name each), the per-frame choice and faulty payloads.

Each setting has one name everywhere: the ``FaultConfig`` field (``malformed_fraction``), the key of the control
API (``/control/faults?malformed_fraction=0.1``, ``SimulatorThread.set_faults(malformed_fraction=0.1)``) and,
in kebab case, the flag (``--malformed-fraction``). Pure except ``FaultState``, which only the event loop
thread touches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from models.errors import ConfigError
from simulator.market import SymbolBook, derive_rng, render_payload

logger = logging.getLogger(__name__)

ALL_STREAMS = "*"


class FaultKind(StrEnum):
    """Faults the simulator can inject (also the keys of the fault counters); the first three replace one
    frame's payload."""

    MALFORMED = "malformed"
    CROSSED = "crossed"
    ONE_SIDED = "one_sided"
    DROP = "drop"
    STALL = "stall"
    DELAY = "delay"


MALFORMED_VARIANTS: tuple[str, ...] = (
    "not_json",
    "missing_field",
    "non_numeric_price",
    "negative_qty",
    "wrong_type",
)


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Fault settings; fractions are per frame in [0, 1], times in seconds unless named ``_ms``.

    ``drop_every_s`` / ``stall_every_s`` of ``None`` (or 0, stored as ``None``) switch the periodic fault off.
    Raises ``ConfigError`` (one readable line) for a value out of range.
    """

    malformed_fraction: float = 0.0
    crossed_fraction: float = 0.0
    one_sided_fraction: float = 0.0
    delay_ms: float = 0.0
    drop_every_s: float | None = None
    stall_every_s: float | None = None
    stall_for_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("malformed_fraction", "crossed_fraction", "one_sided_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.delay_ms < 3_600_000:
            raise ConfigError(f"delay_ms must be in [0, 3600000), got {self.delay_ms}")
        for name in ("drop_every_s", "stall_every_s"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be >= 0 (0: off), got {value}")
            if value == 0:
                object.__setattr__(self, name, None)
        if not (self.stall_for_s > 0 and math.isfinite(self.stall_for_s)):
            raise ConfigError(f"stall_for_s must be positive, got {self.stall_for_s}")

    @property
    def book_faults_on(self) -> bool:
        """True when some frames must be rendered malformed, crossed or one-sided."""
        return self.malformed_fraction > 0 or self.crossed_fraction > 0 or self.one_sided_fraction > 0

    def replace(self, changes: Mapping[str, float | None]) -> FaultConfig:
        """A copy with ``changes`` (setting name -> value) applied; ``ConfigError`` for an unknown name."""
        unknown = sorted(set(changes) - set(FAULT_SETTINGS))
        if unknown:
            raise ConfigError(f"unknown fault setting(s) {unknown}; known: {', '.join(FAULT_SETTINGS)}")
        fields: dict[str, Any] = dict(changes)
        return dataclasses.replace(self, **fields)

    def to_dict(self) -> dict[str, float | None]:
        """The settings by name, JSON-ready."""
        return {name: getattr(self, name) for name in FAULT_SETTINGS}


FAULT_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FaultConfig))
"""Every fault setting's one name, in declaration order."""


def choose_fault(u: float, settings: FaultConfig) -> FaultKind | None:
    """Map a uniform draw ``u`` in [0, 1) to a book fault.

    The fractions are stacked in this order (malformed, crossed, one-sided), so each is exact as long as
    their sum stays within 1; past that the later kinds get what is left.
    """
    malformed = settings.malformed_fraction
    crossed = malformed + settings.crossed_fraction
    if u < malformed:
        return FaultKind.MALFORMED
    if u < crossed:
        return FaultKind.CROSSED
    if u < crossed + settings.one_sided_fraction:
        return FaultKind.ONE_SIDED
    return None


def _malformed_payload(book: SymbolBook, depth: int, variant: str, rng: random.Random) -> bytes:
    bids, asks = book.top_levels(depth)
    good = book.payload(depth)
    if variant == "not_json":
        return good[: 1 + int(rng.random() * (len(good) - 2))]
    if variant == "missing_field":
        return b'{"lastUpdateId":%d,"bids":[%b]}' % (book.last_update_id, b",".join(bids))
    if variant == "non_numeric_price":
        bids[0] = b'["not-a-number","1.00000000"]'
    elif variant == "negative_qty":
        asks[0] = asks[0].rsplit(b",", 1)[0] + b',"-1.00000000"]'
    elif variant == "wrong_type":
        return b'{"lastUpdateId":"%d","bids":%b,"asks":[%b]}' % (book.last_update_id, bids[0], b",".join(asks))
    else:
        raise ValueError(f"unknown malformed variant {variant!r}")
    return render_payload(book.last_update_id, bids, asks)


def faulty_payload(
    kind: FaultKind, book: SymbolBook, depth: int, rng: random.Random, *, variant: str | None = None
) -> tuple[bytes, str]:
    """Render ``book`` with the book fault ``kind``, leaving the book untouched; returns the payload and a short
    description.

    ``MALFORMED`` picks one of ``MALFORMED_VARIANTS`` at random unless ``variant`` names one; ``CROSSED`` puts the
    best bid 1 to 3 ticks above the best ask (bids stay descending); ``ONE_SIDED`` empties a random side.
    """
    if kind is FaultKind.MALFORMED:
        variant = variant or MALFORMED_VARIANTS[int(rng.random() * len(MALFORMED_VARIANTS))]
        return _malformed_payload(book, depth, variant, rng), variant
    bids, asks = book.top_levels(depth)
    if kind is FaultKind.CROSSED:
        bids[0] = book.render_level(book.best_ask_ticks + 1 + int(rng.random() * 3), b"1.00000000")
        return render_payload(book.last_update_id, bids, asks), "best bid above best ask"
    if kind is FaultKind.ONE_SIDED:
        if rng.random() < 0.5:
            return render_payload(book.last_update_id, [], asks), "one side empty"
        return render_payload(book.last_update_id, bids, []), "one side empty"
    raise ValueError(f"{kind} is not a book fault")


class FaultState:
    """Faults in force now: the settings (replaced whole on change) and the running stalls."""

    def __init__(self, settings: FaultConfig, *, seed: int) -> None:
        self.rng = derive_rng(seed, "faults")
        self.settings = settings
        self.book_faults_on = settings.book_faults_on  # read per frame: kept as a plain attribute
        # stream name (or ALL_STREAMS) -> loop time at which the stall ends
        self.stalls: dict[str, float] = {}

    def update(self, changes: Mapping[str, float | None]) -> FaultConfig:
        """Apply ``changes`` (setting name -> value, validated as a whole) and return the new settings."""
        self.settings = self.settings.replace(changes)
        self.book_faults_on = self.settings.book_faults_on
        return self.settings

    def choose(self) -> FaultKind | None:
        """Draw the book fault of the next frame (None: a good frame)."""
        return choose_fault(self.rng.random(), self.settings)

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
        """Switch every fault off (the stall length is kept: it is not a fault on its own)."""
        self.settings = FaultConfig(stall_for_s=self.settings.stall_for_s)
        self.book_faults_on = False
        self.stalls.clear()
