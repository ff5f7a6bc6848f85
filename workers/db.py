"""Engine construction for worker processes. One engine per process: engines must not cross a fork."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

__all__ = ["make_engine"]


def make_engine(database_url: str, *, pool_size: int = 2) -> Engine:
    """A small pool with pre-ping, so a connection broken by a PostgreSQL restart is replaced, not reused."""
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": 10, "application_name": "bookfeed-worker"},
    )
