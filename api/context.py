"""What every request of the API shares: the read-only engine, the limits from Settings, and the cached index of
stored symbols. Built once by api.main.create_app and kept in `app.state.ctx`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import Engine

from api import queries
from api.problems import ProblemError

__all__ = ["ApiContext", "SymbolIndex", "get_ctx"]


class SymbolIndex:
    """`/v1/symbols` and the unknown-symbol check. Counting every book is a scan of order_books, so the result is
    kept `ttl_s` seconds; a symbol not in it triggers a refresh only once the kept result is that old."""

    def __init__(self, engine: Engine, *, ttl_s: float) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._stats: list[dict[str, Any]] = []
        self._names: frozenset[str] = frozenset()
        self._read_at = -float("inf")

    def _refresh(self) -> None:
        stats = queries.symbol_stats(self._engine)
        self._stats, self._names, self._read_at = stats, frozenset(s["symbol"] for s in stats), time.monotonic()

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._ttl_s:
                self._refresh()
            return self._stats

    def require(self, symbol: str) -> str:
        """`symbol` if books of it are stored; else ProblemError 404."""
        with self._lock:
            if symbol not in self._names and time.monotonic() - self._read_at >= self._ttl_s:
                self._refresh()
            if symbol not in self._names:
                raise ProblemError(404, "Unknown symbol", f"no books of {symbol} are stored (see /v1/symbols)")
        return symbol


@dataclass(frozen=True, slots=True)
class ApiContext:
    engine: Engine
    symbols: SymbolIndex
    max_limit: int  # BOOKFEED_API_MAX_LIMIT
    max_range_s: float  # BOOKFEED_API_MAX_RANGE_S
    redis_url: str | None  # for WS /v1/live; None: no live push
    live_channel: str
    archive_url: str | None = None  # BOOKFEED_ARCHIVE_URL: the cold archive api.books reads too


def get_ctx(request: Request) -> ApiContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx
