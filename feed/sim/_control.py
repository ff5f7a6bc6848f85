"""Fault controls and the HTTP routes on the websocket port: ``/control/*`` and ``/api/v3/*``.

``Controls`` runs on the event loop thread; the HTTP API and ``SimulatorThread`` both drive it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from feed.sim._faults import FaultKind
from feed.sim._server import StreamServer
from feed.sim._symbols import SymbolSpec, exchange_info

logger = logging.getLogger(__name__)

_BOOK_FAULTS = (FaultKind.MALFORMED, FaultKind.CROSSED, FaultKind.ONE_SIDED)


class ControlError(ValueError):
    """A control request has a missing or out-of-range parameter (HTTP 400)."""


class Controls:
    """Switch faults on and off and read counters; book faults only when ``book_faults`` (the simulator)."""

    def __init__(self, server: StreamServer, *, book_faults: bool) -> None:
        self._server = server
        self._book_faults = book_faults

    def drop(self, every_s: float | None = None) -> dict[str, Any]:
        """Drop every connection now, or (``every_s`` given) every ``every_s`` seconds; 0 stops that."""
        if every_s is None:
            return {"dropped": self._server.drop_all()}
        if every_s < 0 or not math.isfinite(every_s):
            raise ControlError(f"every must be >= 0 seconds, got {every_s}")
        self._server.faults.drop_every_s = every_s or None
        self._server.refresh_periodic()
        logger.warning("injected periodic drop: every %s s", every_s or "never")
        return {"drop_every_s": every_s}

    def stall(self, stream: str | None, seconds: float) -> dict[str, Any]:
        """Keep ``stream`` (every stream if None) silent for ``seconds``; connections stay open."""
        if not seconds > 0 or not math.isfinite(seconds):
            raise ControlError(f"seconds must be positive, got {seconds}")
        self._server.stats.faults[FaultKind.STALL.value] += 1
        self._server.faults.stall(stream, seconds, now=asyncio.get_running_loop().time())
        return {"stream": stream, "seconds": seconds}

    def set_fraction(self, kind: FaultKind, fraction: float) -> dict[str, Any]:
        """Render ``fraction`` (0..1) of the frames with the book fault ``kind``."""
        if kind not in _BOOK_FAULTS:
            raise ControlError(f"{kind.value} is not a per-frame fault")
        if not self._book_faults:
            raise ControlError(f"{kind.value} frames need the simulator, not a replay")
        if not 0.0 <= fraction <= 1.0:
            raise ControlError(f"fraction must be in [0, 1], got {fraction}")
        setattr(self._server.faults, kind.value, fraction)
        logger.warning("injected %s fault: fraction=%s", kind.value, fraction)
        return {f"{kind.value}_fraction": fraction}

    def set_delay(self, ms: float) -> dict[str, Any]:
        """Delay every data frame by ``ms`` milliseconds (0 switches the delay off)."""
        if not 0.0 <= ms < 3_600_000:
            raise ControlError(f"ms must be in [0, 3600000), got {ms}")
        self._server.faults.delay_ms = ms
        logger.warning("injected delay: %s ms per frame", ms)
        return {"delay_ms": ms}

    def reset(self) -> dict[str, Any]:
        """Switch every fault off."""
        self._server.faults.reset()
        self._server.refresh_periodic()
        logger.info("all faults cleared")
        return {"reset": True}

    def stats(self) -> dict[str, Any]:
        """Frames sent per stream, connections (current, total) and fault counters."""
        return self._server.stats.to_dict()


def _number(query: Mapping[str, str], name: str) -> float:
    try:
        return float(query[name])
    except KeyError:
        raise ControlError(f"missing parameter {name!r}") from None
    except ValueError:
        raise ControlError(f"parameter {name!r} must be a number, got {query[name]!r}") from None


def _select(specs: Sequence[SymbolSpec], query: Mapping[str, str]) -> list[SymbolSpec] | None:
    """Apply ``symbol=`` / ``symbols=["A","B"]`` like Binance; None when a name is unknown."""
    if "symbol" in query:
        wanted = [query["symbol"]]
    elif "symbols" in query:
        try:
            wanted = [str(name) for name in orjson.loads(query["symbols"])]
        except (orjson.JSONDecodeError, TypeError):
            return None
    else:
        return list(specs)
    by_name = {spec.symbol: spec for spec in specs}
    if any(name not in by_name for name in wanted):
        return None
    return [by_name[name] for name in wanted]


class HttpApi:
    """Route table for the HTTP requests the server answers instead of a websocket handshake."""

    def __init__(self, controls: Controls, specs: Sequence[SymbolSpec]) -> None:
        self._specs = list(specs)
        self._controls = controls
        self._routes: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
            "drop": lambda q: controls.drop(_number(q, "every") if "every" in q else None),
            "stall": lambda q: controls.stall(q.get("stream") or None, _number(q, "seconds")),
            "malformed": lambda q: controls.set_fraction(FaultKind.MALFORMED, _number(q, "fraction")),
            "crossed": lambda q: controls.set_fraction(FaultKind.CROSSED, _number(q, "fraction")),
            "one_sided": lambda q: controls.set_fraction(FaultKind.ONE_SIDED, _number(q, "fraction")),
            "delay": lambda q: controls.set_delay(_number(q, "ms")),
            "reset": lambda q: controls.reset(),
            "stats": lambda q: controls.stats(),
        }

    def __call__(self, method: str, path: str, query: Mapping[str, str]) -> tuple[int, Any] | None:
        """Answer ``/api/v3/exchangeInfo|ping|time`` and ``/control/<name>``; None for other paths."""
        if path == "/api/v3/exchangeInfo":
            selected = _select(self._specs, query)
            if selected is None:
                return 400, {"code": -1121, "msg": "Invalid symbol."}
            return 200, exchange_info(selected, server_time_ms=time.time_ns() // 1_000_000)
        if path == "/api/v3/ping":
            return 200, {}
        if path == "/api/v3/time":
            return 200, {"serverTime": time.time_ns() // 1_000_000}
        if not path.startswith("/control/"):
            return None
        route = self._routes.get(path.removeprefix("/control/"))
        if route is None:
            return 404, {"error": f"unknown control {path}", "controls": sorted(self._routes)}
        try:
            return 200, route(query)
        except ControlError as exc:
            return 400, {"error": str(exc)}
