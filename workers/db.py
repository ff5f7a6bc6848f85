"""Engine construction for worker processes. One engine per process: engines must not cross a fork."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

__all__ = ["make_engine"]


def make_engine(database_url: str, *, pool_size: int = 2) -> Engine:
    """A small pool without pre-ping: a ping is a round trip per batch. A connection PostgreSQL closed (a restart)
    fails its batch's first statement instead; SQLAlchemy then sees a disconnect and discards every connection of
    the pool, the batch is retried as an outage (workers.deliveries), and the retry connects afresh."""
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=2,
        pool_recycle=1800,
        connect_args={"connect_timeout": 10, "application_name": "bookfeed-worker"},
    )
