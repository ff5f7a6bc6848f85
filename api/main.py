"""The API application (`bookfeed api`): builds the FastAPI app from Settings (routes, websocket, live page, problem
handlers, token) and serves it with uvicorn. Connects to PostgreSQL read-only (as the reader role in compose)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine

from api import live, page, routes
from api.auth import BearerAuth
from api.context import ApiContext, SymbolIndex
from api.health import HealthProbe, HealthThresholds
from api.problems import install_problem_handlers
from models.live import live_channel
from models.settings import Settings, normalise_database_url

__all__ = ["create_app", "make_engine", "run_api"]

API_VERSION = "1"


def make_engine(database_url: str) -> Engine:
    """A pooled engine whose transactions are read-only: the API never writes, even with a login that could."""
    return create_engine(
        normalise_database_url(database_url),
        pool_size=5,
        max_overflow=10,
        pool_pre_ping=True,
        connect_args={"options": "-c default_transaction_read_only=on", "application_name": "bookfeed-api"},
    )


def create_app(
    settings: Settings, *, engine: Engine | None = None, symbols_ttl_s: float = 10.0, health_ttl_s: float = 2.0
) -> FastAPI:
    """The app; `engine` defaults to one on DATABASE_URL (disposed at shutdown; a given one is left to its owner).
    The symbol index is kept `symbols_ttl_s`, the health `health_ttl_s` seconds."""
    own = engine is None
    eng = engine if engine is not None else make_engine(settings.require_database_url())
    archive_url = settings.archive_url or None
    health = HealthProbe(
        eng,
        settings.redis_url,
        prefix=settings.broker_key_prefix,
        limits=HealthThresholds.from_settings(settings),
        ttl_s=health_ttl_s,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        health.close()
        if own:
            eng.dispose()

    app = FastAPI(
        title="bookfeed",
        version=API_VERSION,
        summary="Recorded Binance order books, their metrics, averages, gaps and rejected frames.",
        lifespan=lifespan,
    )
    app.state.ctx = ApiContext(
        engine=eng,
        symbols=SymbolIndex(eng, ttl_s=symbols_ttl_s, archive_url=archive_url),
        max_limit=settings.api_max_limit,
        max_range_s=settings.api_max_range_s,
        redis_url=settings.redis_url,
        live_channel=live_channel(settings.broker_key_prefix),
        archive_url=archive_url,
        health=health,
    )
    install_problem_handlers(app)
    app.include_router(routes.router)
    app.include_router(live.router)
    app.include_router(page.router)
    token = settings.api_token.get_secret_value()
    if token:
        app.add_middleware(BearerAuth, token=token)
    return app


def run_api(settings: Settings, *, host: str, port: int) -> None:
    """Serve the API until SIGINT/SIGTERM. Logging is configured by the caller (uvicorn's own config is not used)."""
    uvicorn.run(
        create_app(settings), host=host, port=port, log_config=None, proxy_headers=False, ws="websockets-sansio"
    )
