"""Controlling a running server: fault settings by name, one-off faults, counters, and the HTTP routes on the
websocket port (``/api/v3/*`` as Binance, ``/control/*`` for tests and demos).

``Controls`` runs on the event loop thread; the HTTP API and ``simulator.runtime.ServerThread`` both drive it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from models.errors import ConfigError
from simulator.faults import FAULT_SETTINGS, FaultKind
from simulator.market import SymbolSpec, exchange_info
from simulator.server import StreamServer

logger = logging.getLogger(__name__)

_BOOK_FAULT_SETTINGS = ("malformed_fraction", "crossed_fraction", "one_sided_fraction")


class ControlError(ConfigError):
    """A control request has a missing or out-of-range parameter (HTTP 400)."""


class Controls:
    """Change fault settings, run one-off faults (drop, stall) and read counters.

    Book faults (``malformed_fraction``, ``crossed_fraction``, ``one_sided_fraction``) need ``book_faults`` (the
    simulator, not a replay). Bad values raise ``ConfigError`` (``ControlError`` for the one-off faults).
    """

    def __init__(self, server: StreamServer, *, book_faults: bool) -> None:
        self._server = server
        self._book_faults = book_faults

    def set_faults(self, changes: Mapping[str, float | None]) -> dict[str, float | None]:
        """Apply fault settings by name (``FaultConfig`` fields); returns every setting afterwards."""
        refused = [name for name in _BOOK_FAULT_SETTINGS if changes.get(name) and not self._book_faults]
        if refused:
            raise ControlError(f"{', '.join(refused)} need(s) the simulator, not a replay")
        settings = self._server.faults.update(changes)
        if {"drop_every_s", "stall_every_s"} & changes.keys():
            self._server.refresh_periodic()
        if changes:
            logger.warning("fault settings changed: %s", dict(changes))
        return settings.to_dict()

    def drop_all(self) -> dict[str, Any]:
        """Abort every connection now (no close frame)."""
        return {"dropped": self._server.drop_all()}

    def stall(self, stream: str | None, seconds: float) -> dict[str, Any]:
        """Keep ``stream`` (every stream if None) silent for ``seconds``; connections stay open."""
        if not seconds > 0 or not math.isfinite(seconds):
            raise ControlError(f"seconds must be positive, got {seconds}")
        self._server.stats.faults[FaultKind.STALL.value] += 1
        self._server.faults.stall(stream, seconds, now=asyncio.get_running_loop().time())
        return {"stream": stream, "seconds": seconds}

    def reset(self) -> dict[str, Any]:
        """Switch every fault off."""
        self._server.faults.reset()
        self._server.refresh_periodic()
        logger.info("all faults cleared")
        return {"reset": True}

    def stats(self) -> dict[str, Any]:
        """Frames sent per stream (and skipped for slow clients), connections (current, total), fault counters and
        limit violations per kind."""
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
    """HTTP requests answered instead of a websocket handshake (any method; POST for changes by convention).

    ``/api/v3/exchangeInfo|ping|time`` as Binance; ``/control/faults?<setting>=<value>&..`` (none: read),
    ``/control/drop``, ``/control/stall?seconds=S[&stream=NAME]``, ``/control/reset``, ``/control/stats``.
    """

    def __init__(self, controls: Controls, specs: Sequence[SymbolSpec]) -> None:
        self._specs = list(specs)
        self._routes: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
            "faults": lambda q: controls.set_faults({name: _number(q, name) for name in q}),
            "drop": lambda q: controls.drop_all(),
            "stall": lambda q: controls.stall(q.get("stream") or None, _number(q, "seconds")),
            "reset": lambda q: controls.reset(),
            "stats": lambda q: controls.stats(),
        }

    def __call__(self, path: str, query: Mapping[str, str]) -> tuple[int, Any] | None:
        """(status, JSON body) for the routes above; None for other paths (websocket or 404)."""
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
        except ConfigError as exc:
            return 400, {"error": str(exc), "settings": list(FAULT_SETTINGS)}
