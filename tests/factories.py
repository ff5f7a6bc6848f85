"""Builders shared by the tests: Binance combined-stream frames, parsed books and the recorded fixtures.

Frames are built the way Binance sends them (compact JSON, prices and quantities as strings) so that they go through
the real parser; `make_book` skips the parser for tests that only need a BookSnapshot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.book import BookSnapshot

FIXTURES = Path(__file__).parent / "fixtures"
DEPTH_SAMPLES = FIXTURES / "binance_depth_samples.jsonl"
DIFF_DEPTH_SAMPLE = FIXTURES / "binance_diff_depth_sample.jsonl"

# 2023-11-14 22:13:20.123456789 UTC: a receive time with sub-microsecond digits, to catch rounding.
RECEIVED_NS = 1_700_000_000_123_456_789

Level = Sequence[Any]
_GENERATED: Any = object()  # "build it from the other arguments"; None is a value a test may want to send

BIDS = (("40069.98000000", "0.00002300"), ("40067.04000000", "0.06000000"))
ASKS = (("40069.99000000", "1.32492400"), ("40072.90000000", "0.00099900"))


def stream_name(symbol: str = "btcusdt", depth: int = 20, speed: str | None = "100ms") -> str:
    """`<symbol>@depth<N>[@<speed>]`, the name Binance gives a partial-depth stream."""
    return f"{symbol}@depth{depth}" + (f"@{speed}" if speed else "")


def make_data(
    *,
    bids: Sequence[Level] = BIDS,
    asks: Sequence[Level] = ASKS,
    last_update_id: Any = 11719214114,
    **extra: Any,
) -> dict[str, Any]:
    """The `data` object of a partial-depth frame; `extra` adds (unexpected) fields."""
    return {
        "lastUpdateId": last_update_id,
        "bids": [list(lv) for lv in bids],
        "asks": [list(lv) for lv in asks],
        **extra,
    }


def make_frame(
    symbol: str = "btcusdt",
    depth: int = 20,
    *,
    bids: Sequence[Level] = BIDS,
    asks: Sequence[Level] = ASKS,
    last_update_id: Any = 11719214114,
    speed: str | None = "100ms",
    stream: Any = _GENERATED,
    data: Any = _GENERATED,
) -> str:
    """Compact combined-stream frame text. `stream` and `data` replace the generated parts verbatim."""
    payload = {
        "stream": stream_name(symbol, depth, speed) if stream is _GENERATED else stream,
        "data": make_data(bids=bids, asks=asks, last_update_id=last_update_id) if data is _GENERATED else data,
    }
    # The stdlib encoder, not orjson: tests send integers beyond 64 bits too.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def make_book(
    symbol: str = "BTCUSDT",
    depth: int = 20,
    *,
    bids: Sequence[Level] = BIDS,
    asks: Sequence[Level] = ASKS,
    last_update_id: int = 11719214114,
    received_ns: int = RECEIVED_NS,
) -> BookSnapshot:
    """A BookSnapshot built directly (no validation): the levels are taken as given."""
    return BookSnapshot(
        symbol=symbol,
        depth=depth,
        last_update_id=last_update_id,
        received_ns=received_ns,
        bid_prices=tuple(str(p) for p, _ in bids),
        bid_quantities=tuple(str(q) for _, q in bids),
        ask_prices=tuple(str(p) for p, _ in asks),
        ask_quantities=tuple(str(q) for _, q in asks),
    )


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a .jsonl fixture, verbatim (no trailing newline)."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def depth_samples() -> list[str]:
    """Every real partial-depth frame of tests/fixtures/binance_depth_samples.jsonl."""
    return read_lines(DEPTH_SAMPLES)


def diff_depth_sample() -> str:
    """The one diff-depth (`@depth@100ms`) frame: a different stream type that must be rejected."""
    (line,) = read_lines(DIFF_DEPTH_SAMPLE)
    return line
