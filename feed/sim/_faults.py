"""Fault vocabulary, per-frame fault choice and faulty payload rendering. Pure: no I/O, no clocks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from feed.sim._market import SymbolBook, render_payload


class FaultKind(StrEnum):
    """Faults the simulator can inject; the first three replace one frame's payload."""

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
    """Faults active from start-up; fractions are per frame in [0, 1], times in seconds unless named ``_ms``."""

    malformed_fraction: float = 0.0
    crossed_fraction: float = 0.0
    one_sided_fraction: float = 0.0
    delay_ms: float = 0.0
    drop_every_s: float | None = None
    stall_every_s: float | None = None
    stall_for_s: float = 5.0


def choose_fault(u: float, *, malformed: float, crossed: float, one_sided: float) -> FaultKind | None:
    """Map a uniform draw ``u`` in [0, 1) to a book fault.

    The fractions are stacked in this order (malformed, crossed, one-sided), so each is exact as long as
    their sum stays within 1; past that the later kinds get what is left.
    """
    if u < malformed:
        return FaultKind.MALFORMED
    if u < malformed + crossed:
        return FaultKind.CROSSED
    if u < malformed + crossed + one_sided:
        return FaultKind.ONE_SIDED
    return None


def malformed_payload(book: SymbolBook, depth: int, variant: str, rng: random.Random) -> bytes:
    """Return a broken payload of the given ``variant`` (one of ``MALFORMED_VARIANTS``)."""
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


def crossed_payload(book: SymbolBook, depth: int, rng: random.Random) -> bytes:
    """Return the book with a best bid 1 to 3 ticks above the best ask (bids stay descending)."""
    bids, asks = book.top_levels(depth)
    price = book.best_ask_ticks + 1 + int(rng.random() * 3)
    bids[0] = book.render_level(price, b"1.00000000")
    return render_payload(book.last_update_id, bids, asks)


def one_sided_payload(book: SymbolBook, depth: int, rng: random.Random) -> bytes:
    """Return the book with an empty bid or ask side (chosen at random)."""
    bids, asks = book.top_levels(depth)
    if rng.random() < 0.5:
        return render_payload(book.last_update_id, [], asks)
    return render_payload(book.last_update_id, bids, [])


def faulty_payload(kind: FaultKind, book: SymbolBook, depth: int, rng: random.Random) -> tuple[bytes, str]:
    """Render a payload with the book fault ``kind``; returns the payload and a short description."""
    if kind is FaultKind.MALFORMED:
        variant = MALFORMED_VARIANTS[int(rng.random() * len(MALFORMED_VARIANTS))]
        return malformed_payload(book, depth, variant, rng), variant
    if kind is FaultKind.CROSSED:
        return crossed_payload(book, depth, rng), "best bid above best ask"
    if kind is FaultKind.ONE_SIDED:
        return one_sided_payload(book, depth, rng), "one side empty"
    raise ValueError(f"{kind} is not a book fault")
