"""What every request of the API shares: the read-only engine, the limits from Settings, the cached index of
stored symbols and the health probe. Built once by api.main.create_app and kept in `app.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine

from api.health import HealthProbe
from api.symbols import SymbolIndex

__all__ = ["ApiContext", "SymbolIndex", "get_ctx"]


@dataclass(frozen=True, slots=True)
class ApiContext:
    engine: Engine
    symbols: SymbolIndex
    max_limit: int  # BOOKFEED_API_MAX_LIMIT
    max_range_s: float  # BOOKFEED_API_MAX_RANGE_S
    redis_url: str | None  # for WS /v1/live; None: no live push
    live_channel: str
    archive_url: str | None = None  # BOOKFEED_ARCHIVE_URL: the cold archive api.books reads too
    health: HealthProbe | None = None  # GET /v1/health


def get_ctx(request: Request) -> ApiContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx
