"""Every fixed name bookfeed uses, in one place: the exchange, symbols, partial-depth streams, average windows,
queues and tasks, and the frame-size limit. Pure: stdlib only (and models.errors).

Symbols are upper case everywhere (``BTCUSDT``: settings, tables, views, the simulator). Binance's stream names are
lower case (``btcusdt@depth20@100ms``); `stream_name` and `parse_stream_name` are the only places that convert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from models.errors import MalformedPayloadError

__all__ = [
    "ALL_SYMBOLS",
    "AVERAGES_TASK",
    "DEFAULT_DEPTH",
    "DEFAULT_SPEED",
    "DEFAULT_SYMBOLS",
    "DEPTHS",
    "EXCHANGE",
    "EXCHANGES",
    "INGEST_QUEUE",
    "INGEST_TASK",
    "LIVE_REST_URL",
    "LIVE_URL",
    "MAINTENANCE_QUEUE",
    "MAX_FRAME_BYTES",
    "MAX_LEVELS",
    "METRICS_QUEUE",
    "QUEUES",
    "RETENTION_TASK",
    "SPEEDS",
    "WINDOWS_S",
    "Speed",
    "StreamName",
    "normalise_asset",
    "normalise_symbol",
    "parse_stream_name",
    "stream_name",
]

# --- the exchange --------------------------------------------------------------------------------------------------
EXCHANGE: Final = "binance"
# Every exchange a batch may name; anything else is a foreign producer's batch and is refused.
EXCHANGES: Final = frozenset({EXCHANGE})
LIVE_URL: Final = "wss://stream.binance.com:9443"
LIVE_REST_URL: Final = "https://api.binance.com"  # exchangeInfo, for BOOKFEED_SYMBOLS=all
ALL_SYMBOLS: Final = "ALL"  # BOOKFEED_SYMBOLS=all: every TRADING symbol the exchange lists

# --- symbols and partial-depth streams -----------------------------------------------------------------------------
DEFAULT_SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
DEPTHS: Final = (5, 10, 20)  # levels per side Binance offers on a partial-depth stream
MAX_LEVELS: Final = max(DEPTHS)
DEFAULT_DEPTH: Final = 20
Speed = Literal["1000ms", "100ms"]
SPEEDS: Final[tuple[Speed, ...]] = ("1000ms", "100ms")
DEFAULT_SPEED: Final[Speed] = "1000ms"
# A depth20 frame is about 1.5 KB; anything far larger is hostile or not a partial book. Workers refuse larger frames.
MAX_FRAME_BYTES: Final = 64 * 1024

# --- average-price windows -----------------------------------------------------------------------------------------
WINDOWS_S: Final = (30, 60)  # window sizes in seconds: beat schedules one averages task per size

# --- the wire between the feed and the workers ---------------------------------------------------------------------
INGEST_TASK: Final = "bookfeed.ingest_batch"
AVERAGES_TASK: Final = "bookfeed.compute_averages"
INGEST_QUEUE: Final = "ingest"
METRICS_QUEUE: Final = "metrics"
# Retention (BOOKFEED_RETENTION_DAYS) drops partitions: DDL that only the tables' owner may run, so its task has a
# queue of its own, consumed by a worker connected as the owner (every worker started without -Q, as locally; in
# docker-compose the `maintenance` service), never by workers of the bookfeed_writer role.
RETENTION_TASK: Final = "bookfeed.retention"
MAINTENANCE_QUEUE: Final = "maintenance"
QUEUES: Final = (INGEST_QUEUE, METRICS_QUEUE, MAINTENANCE_QUEUE)

_SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")
# Binance accepts an explicit "@1000ms" too (binance-connector sends it); no suffix means 1000 ms.
_STREAM_RE = re.compile(r"([a-z0-9]{2,20})@depth(5|10|20)(?:@(100ms|1000ms))?")


@dataclass(frozen=True, slots=True)
class StreamName:
    """A parsed partial-depth stream name such as ``btcusdt@depth20@100ms``."""

    symbol: str  # upper case, e.g. BTCUSDT
    depth: int  # 5, 10 or 20
    interval_ms: int = 1000  # 100 or 1000: how often the stream sends a book


def normalise_asset(asset: str) -> str:
    """An asset or symbol name in upper case (``usdt`` -> ``USDT``); ValueError unless 2-20 letters or digits."""
    return normalise_symbol(asset)


def normalise_symbol(symbol: str) -> str:
    """The symbol in the vocabulary's case (``btcusdt`` -> ``BTCUSDT``); ValueError unless 2-20 letters or digits."""
    s = symbol.strip().upper()
    if not (s.isascii() and _SYMBOL_RE.fullmatch(s)):
        raise ValueError(f"symbol {symbol.strip()[:40]!r} is not 2-20 letters or digits")
    return s


def stream_name(symbol: str, depth: int, speed: Speed = DEFAULT_SPEED) -> str:
    """Binance's name of a partial-depth stream: ``stream_name("BTCUSDT", 20, "100ms") == "btcusdt@depth20@100ms"``."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}")
    return f"{symbol.lower()}@depth{depth}" + ("@100ms" if speed == "100ms" else "")


# Each worker batch of the whole market names about 1,000 streams: parsing each name once per process, not once per
# batch, saves about 5 % of a worker's CPU. Bounded: a flood of made-up names cannot grow it.
@lru_cache(maxsize=16_384)
def parse_stream_name(stream: str) -> StreamName:
    """Parse ``<symbol>@depth<5|10|20>[@100ms|@1000ms]``; raises MalformedPayloadError for any other stream."""
    m = _STREAM_RE.fullmatch(stream)
    if m is None:
        raise MalformedPayloadError(f"unknown stream {stream[:60]!r}: not a <symbol>@depth<5|10|20> stream")
    interval_ms = 100 if m.group(3) == "100ms" else 1000
    return StreamName(symbol=m.group(1).upper(), depth=int(m.group(2)), interval_ms=interval_ms)
