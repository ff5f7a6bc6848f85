"""Celery tasks: thin wrappers that decode, delegate to workers.ingest / workers.averages, and summarise."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from models.errors import InvalidBookError, TransientStorageError
from models.messages import AVERAGES_TASK, INGEST_TASK
from models.settings import get_settings
from workers import averages, ingest
from workers.app import app, get_engine

logger = logging.getLogger(__name__)

_MAX_RETRIES = get_settings().ingest_max_retries
_POISON_RETRIES = 3
_REQUEUE_PAUSE_S = 30.0


def _backoff_s(retries: int) -> float:
    """Exponential backoff with full jitter, capped at 60 s (below the broker visibility timeout)."""
    return random.uniform(1.0, min(60.0, 2.0 ** (retries + 1)))


@app.task(name=INGEST_TASK, bind=True, max_retries=_MAX_RETRIES)
def ingest_batch(self: Task, batch: dict[str, Any]) -> dict[str, Any]:
    """Store one batch of frames. PostgreSQL outages are retried with backoff (30 tries, about 13 min in all by
    default); after the last try the frames go to rejected_messages, or, if PostgreSQL is still down, back to the
    queue."""
    try:
        result = ingest.ingest_batch(get_engine(), batch)
    except TransientStorageError as exc:
        if self.request.retries < self.max_retries:
            logger.warning("PostgreSQL unavailable (%s); retry %d", exc, self.request.retries + 1)
            raise self.retry(exc=exc, countdown=_backoff_s(self.request.retries)) from None
        return _give_up(batch, exc)
    except InvalidBookError as exc:
        n = ingest.reject_batch(get_engine(), batch, reason=f"unreadable batch: {exc}")
        logger.error("batch rejected whole: %s (%d frames recorded)", exc, n)
        return {"rejected_batch": n}
    except Exception as exc:  # a poison batch or a bug: a few tries, then its frames are recorded, never dropped
        if self.request.retries < _POISON_RETRIES:
            logger.warning("batch failed (%s: %s); retry %d", type(exc).__name__, exc, self.request.retries + 1)
            raise self.retry(exc=exc, countdown=_backoff_s(self.request.retries), max_retries=_POISON_RETRIES) from None
        logger.exception("batch failed %d times", _POISON_RETRIES + 1)
        return _give_up(batch, exc)
    logger.info("stored batch", extra={"task_id": self.request.id, **result.as_dict()})
    return result.as_dict()


def _give_up(batch: dict[str, Any], exc: Exception) -> dict[str, Any]:
    try:
        n = ingest.reject_batch(get_engine(), batch, reason=f"not stored after retries: {type(exc).__name__}: {exc}")
    except TransientStorageError:
        logger.error("PostgreSQL still unavailable after %d retries; requeueing the batch", _MAX_RETRIES)
        # Pause before the batch comes back, or a long outage turns into a hot loop of failing deliveries.
        time.sleep(_REQUEUE_PAUSE_S)
        raise Reject(str(exc), requeue=True) from None
    logger.error("batch not stored after %d retries; %d frames recorded as rejected", _MAX_RETRIES, n)
    return {"rejected_batch": n}


@app.task(name=AVERAGES_TASK, autoretry_for=(TransientStorageError,), retry_backoff=5, max_retries=3)
def compute_averages(window_s: int, now_s: float | None = None, grace_s: float | None = None) -> dict[str, Any]:
    """Upsert the closed `window_s` average-price windows (30 and 60 from beat)."""
    s = get_settings()
    result = averages.compute_averages(
        get_engine(),
        window_s=window_s,
        now_s=averages.now_s() if now_s is None else now_s,
        grace_s=s.averages_grace_s if grace_s is None else grace_s,
        lookback_s=s.averages_lookback_s,
    )
    logger.info("averages computed", extra=result.as_dict())
    return result.as_dict()
