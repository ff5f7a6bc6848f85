"""Frame builders for integration tests."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path("/nonexistent")
for candidate in (
    Path(__file__).resolve().parents[1] / "fixtures",
    Path(__file__).resolve().parents[3] / "shared" / "fixtures",
):
    if (candidate / "binance_depth_samples.jsonl").exists():
        FIXTURES = candidate
        break


def frame(
    symbol: str = "btcusdt", depth: int = 20, *, luid: int, bids: list[tuple[str, str]], asks: list[tuple[str, str]]
) -> str:
    data = {"lastUpdateId": luid, "bids": [list(b) for b in bids], "asks": [list(a) for a in asks]}
    return json.dumps({"stream": f"{symbol}@depth{depth}", "data": data}, separators=(",", ":"))


def simple_book(mid: float, *, luid: int, symbol: str = "btcusdt", levels: int = 3) -> str:
    bids = [(f"{mid - 0.5 - i:.8f}", f"{1 + i:.8f}") for i in range(levels)]
    asks = [(f"{mid + 0.5 + i:.8f}", f"{2 + i:.8f}") for i in range(levels)]
    return frame(symbol, luid=luid, bids=bids, asks=asks)


def fixture_frames() -> list[str]:
    return (FIXTURES / "binance_depth_samples.jsonl").read_text().splitlines()


def diff_depth_frame() -> str:
    return (FIXTURES / "binance_diff_depth_sample.jsonl").read_text().splitlines()[0]
