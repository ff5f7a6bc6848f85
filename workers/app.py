"""The Celery app. Loads celeryconfig, includes workers.tasks, gives each worker process its own engine."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown
from sqlalchemy import Engine

from models.logconfig import configure_logging
from models.settings import get_settings
from workers.db import make_engine

__all__ = ["app", "get_engine"]

app = Celery("bookfeed", include=["workers.tasks"])
app.config_from_object("celeryconfig")

_engine: Engine | None = None


def get_engine() -> Engine:
    """This process's engine, created on first use (after any fork)."""
    global _engine
    if _engine is None:
        _engine = make_engine(get_settings().require_database_url())
    return _engine


@worker_process_init.connect
def _reset_engine(**_: Any) -> None:
    # A pool inherited across fork would share sockets with the parent: start clean in every child.
    global _engine
    _engine = None


@worker_process_shutdown.connect
def _dispose_engine(**_: Any) -> None:
    if _engine is not None:
        _engine.dispose()


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    s = get_settings()
    configure_logging(s.log_level, s.log_format)
