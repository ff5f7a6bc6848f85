"""Binance stream names and websocket URL paths understood by the simulator. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

# Binance accepts an explicit "@1000ms" too (binance-connector sends it); no suffix means 1000 ms.
_DEPTH_RE = re.compile(r"^([a-z0-9]+)@depth(5|10|20)(?:@(100|1000)ms)?$")


@dataclass(frozen=True, slots=True)
class DepthStream:
    """A partial-depth stream the simulator can serve, e.g. ``btcusdt@depth20@100ms``."""

    name: str
    symbol: str
    levels: int
    interval_ms: int


@dataclass(frozen=True, slots=True)
class WsPath:
    """What a websocket URL asks for: combined (``/stream``) or raw (``/ws``) frames, and initial streams."""

    combined: bool
    streams: tuple[str, ...]


def parse_stream(name: str, symbols: Container[str]) -> DepthStream | None:
    """Return the depth stream named ``name`` if ``symbols`` (upper-case) has it, else ``None``.

    Like Binance, names are case-sensitive and lower-case; anything else is a stream nobody publishes.
    """
    match = _DEPTH_RE.match(name)
    if match is None:
        return None
    symbol = match.group(1).upper()
    if symbol not in symbols:
        return None
    interval_ms = 100 if match.group(3) == "100" else 1000
    return DepthStream(name, symbol, int(match.group(2)), interval_ms)


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


def parse_ws_path(raw_path: str) -> WsPath | None:
    """Parse ``/stream?streams=a/b``, ``/stream``, ``/ws``, ``/ws/a`` or ``/ws/a/b``; ``None`` for other paths.

    Other query parameters (``timeUnit``) are ignored.
    """
    parts = urlsplit(raw_path)
    path = parts.path.rstrip("/") or "/"
    if path == "/stream":
        values = parse_qs(parts.query, keep_blank_values=True).get("streams", [])
        return WsPath(True, _unique([s for v in values for s in v.split("/")]))
    if path == "/ws":
        return WsPath(False, ())
    if path.startswith("/ws/"):
        return WsPath(False, _unique(unquote(path[4:]).split("/")))
    return None
