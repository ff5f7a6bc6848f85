"""Celery tasks: thin wrappers that decode, delegate to workers.ingest / workers.averages, and summarise."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from typing import Any

from celery import Task
from celery.exceptions import Reject

from models.errors import InvalidBookError, TransientStorageError
from models.messages import AVERAGES_TASK, INGEST_TASK
from models.settings import get_settings
from workers import averages, ingest
from workers.app import app, get_engine
from workers.deliveries import DeliveryCounter, Limits, Mode, Tries, plan

logger = logging.getLogger(__name__)

_S = get_settings()
_LIMITS = Limits(
    max_retries=_S.ingest_max_retries, poison_retries=_S.ingest_poison_retries, max_deliveries=_S.ingest_max_deliveries
)
_DELIVERIES = DeliveryCounter(app.conf.broker_url, key_prefix=_S.broker_key_prefix)
_MAX_BACKOFF_S = 60.0  # below the broker visibility timeout, so a retry held as an ETA task is not redelivered


def _backoff_s(retries: int) -> float:
    """Exponential backoff with full jitter, 0.5-1 s for the first retry (a PostgreSQL restart is over quickly),
    capped at 60 s."""
    return random.uniform(0.5, min(_MAX_BACKOFF_S, 2.0**retries))


# Budgets are counted per kind of failure in the task's kwargs (workers.deliveries.plan), not by Celery's one counter.
@app.task(name=INGEST_TASK, bind=True, max_retries=None)
def ingest_batch(self: Task, batch: Any, outage_retries: int = 0, poison_retries: int = 0) -> dict[str, Any]:
    """Store one batch of frames. PostgreSQL outages are retried with backoff (30 tries, about 13 min by default),
    then the frames go to rejected_messages, or, while PostgreSQL is still down, the batch is retried every 60 s.
    An unexpected error is retried 3 times, then the batch is stored frame by frame, then recorded as rejected;
    so is a batch delivered too often (it killed its worker)."""
    tries = Tries(outage=_count_arg(outage_retries), poison=_count_arg(poison_retries))
    deliveries = _DELIVERIES.count(ingest.batch_key(batch))  # printable, bounded, stable across deliveries
    reason = f"delivered {deliveries} times without being stored"
    force: Mode | None = None  # the last resort, decided within this delivery
    while True:
        mode = force or plan(deliveries=deliveries, tries=tries, limits=_LIMITS)
        try:
            return _attempt(self, batch, mode, reason, deliveries)
        except TransientStorageError as exc:
            if tries.outage >= _LIMITS.max_retries and mode is not Mode.REJECT:
                reason, force = f"not stored after {tries.outage} retries: {type(exc).__name__}: {exc}", Mode.REJECT
                continue
            tries = replace(tries, outage=tries.outage + 1)
            logger.warning("PostgreSQL unavailable (%s); retry %d", exc, tries.outage)
            countdown = _backoff_s(tries.outage - 1) if tries.outage <= _LIMITS.max_retries else _MAX_BACKOFF_S
            error: Exception = exc
        except InvalidBookError as exc:  # the envelope is unreadable: no retry can help
            reason, force = f"unreadable batch: {exc}", Mode.REJECT
            continue
        except Exception as exc:  # a poison batch or a bug: a few tries, then frame by frame, then recorded
            if mode is Mode.REJECT:
                logger.exception("batch could not be recorded as rejected either")
                raise
            tries = replace(tries, poison=tries.poison + 1)
            reason = f"not stored after {tries.poison} failures: {type(exc).__name__}: {exc}"
            if tries.poison > _LIMITS.poison_retries:
                logger.warning(
                    "batch failed %d times (%s); next: %s",
                    tries.poison,
                    exc,
                    plan(deliveries=deliveries, tries=tries, limits=_LIMITS),
                )
                continue
            logger.warning("batch failed (%s: %s); retry %d", type(exc).__name__, exc, tries.poison)
            countdown = _backoff_s(tries.poison - 1)
            error = exc
        _retry(self, tries, error, countdown)
        force = None  # the retry could not be published: start over in this process


def _count_arg(value: object) -> int:
    # A task from another producer may carry anything here: count it as no retry rather than fail on it.
    return value if type(value) is int and value >= 0 else 0


def _attempt(task: Task, batch: Any, mode: Mode, reason: str, deliveries: int | None) -> dict[str, Any]:
    summary = {"task_id": task.request.id, "mode": str(mode), "deliveries": deliveries}
    if mode is Mode.REJECT:
        n = ingest.reject_batch(get_engine(), batch, reason=reason)
        logger.error("batch not stored: %s; %d frames recorded as rejected", reason, n, extra=summary)
        return {"rejected_batch": n}
    result = ingest.ingest_batch(get_engine(), batch, frame_by_frame=mode is Mode.FRAME_BY_FRAME)
    logger.info("stored batch", extra={**summary, **result.as_dict()})
    return result.as_dict()


def _retry(task: Task, tries: Tries, exc: Exception, countdown: float) -> None:
    """Publish the retry (raises Celery's Retry). Celery turns a failed publish (Redis full under noeviction, Redis
    restarting) into Reject(requeue=False), and the broker would delete the batch: keep it in this process instead,
    unacknowledged, wait `countdown` and return so the caller tries again here."""
    try:
        raise task.retry(
            exc=exc, countdown=countdown, kwargs={"outage_retries": tries.outage, "poison_retries": tries.poison}
        )
    except Reject as rej:
        logger.warning(
            "cannot publish the retry (%s); keeping the batch, next try here in %.1f s", rej.reason, countdown
        )
    time.sleep(countdown)


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
