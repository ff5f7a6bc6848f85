"""The Celery app. Loads celeryconfig, includes workers.tasks, gives each worker process its own engine, hooks kombu's
requeue into the outbox (workers.outbox), and starts beat's watch on the averages and its outbox reaper (workers.beat)
in the beat process."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import beat_init, setup_logging, worker_process_init, worker_process_shutdown
from sqlalchemy import Engine

from models.logconfig import configure_logging
from models.settings import get_settings
from workers import live, outbox
from workers import metrics as _metrics  # noqa: F401 (imported for its signals: the node's /metrics)
from workers.beat import start_averages_watch, start_outbox_reaper
from workers.db import make_engine

__all__ = ["app", "get_engine"]

logger = logging.getLogger(__name__)

app = Celery("bookfeed", include=["workers.tasks"])
app.config_from_object("celeryconfig")
# Before any consumer starts: a message kombu puts back in the queue gives its batch a new place in the outbox's
# sequence, so the reaper never takes it for a lost one.
outbox.install_restore_hook()

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


@worker_process_init.connect
def _start_live_push(**_: Any) -> None:
    # Each pool process pushes the books it commits to the API's WS /v1/live (workers.live), over the broker's Redis.
    s = get_settings()
    live.install(live.LivePublisher.from_url(str(app.conf.broker_url), key_prefix=s.broker_key_prefix))


@worker_process_shutdown.connect
def _dispose_engine(**_: Any) -> None:
    if _engine is not None:
        _engine.dispose()


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    s = get_settings()
    configure_logging(s.log_level, s.log_format)


@beat_init.connect
def _start_watches(**_: Any) -> None:
    s = get_settings()
    start_outbox_reaper(outbox.Outbox(str(app.conf.broker_url), key_prefix=s.broker_key_prefix))
    if not s.database_url:
        logger.warning("DATABASE_URL is not set: beat cannot warn when no worker computes the averages")
        return
    start_averages_watch(get_engine, stale_s=s.averages_stale_s)
