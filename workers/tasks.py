"""Celery tasks: thin wrappers that decode, delegate to workers.deliveries / workers.averages, and summarise."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from models.errors import TransientStorageError
from models.settings import get_settings
from models.vocabulary import AVERAGES_TASK, INGEST_TASK
from workers import averages
from workers.app import app, get_engine
from workers.deliveries import DeliveryCounter, Limits, RetryLater, Tries, deliver
from workers.envelope import batch_key

logger = logging.getLogger(__name__)

_S = get_settings()
_LIMITS = Limits(
    max_retries=_S.ingest_max_retries, poison_retries=_S.ingest_poison_retries, max_deliveries=_S.ingest_max_deliveries
)
_DELIVERIES = DeliveryCounter(app.conf.broker_url, key_prefix=_S.broker_key_prefix)


# Retries are decided by workers.deliveries.deliver, with budgets per kind of failure in the task's kwargs; Celery's
# single counter is not used (max_retries=None).
@app.task(name=INGEST_TASK, bind=True, max_retries=None)
def ingest_batch(self: Task, batch: Any, outage_retries: int = 0, poison_retries: int = 0) -> dict[str, Any]:
    """Store one batch of frames, or record them as rejected, as workers.deliveries.deliver decides."""
    tries = Tries.from_args(outage_retries, poison_retries)
    deliveries = _DELIVERIES.count(batch_key(batch))  # printable, bounded, stable across deliveries
    while True:
        step = deliver(get_engine(), batch, deliveries=deliveries, tries=tries, limits=_LIMITS, task_id=self.request.id)
        if not isinstance(step, RetryLater):
            return step
        _retry(self, step)
        tries = step.tries  # the retry could not be published: the next try is made here


def _retry(task: Task, later: RetryLater) -> None:
    """Publish the retry (raises Celery's Retry). Celery turns a failed publish (Redis full under noeviction, Redis
    restarting) into Reject(requeue=False), and the broker would delete the batch; a requeue cannot be published
    either (and an unpublishable requeue stops the worker). So the batch stays here, unacknowledged: wait
    `countdown_s` and return for the next try. The one wait inside a worker slot, and only while Redis refuses
    writes."""
    try:
        raise task.retry(exc=later.cause, countdown=later.countdown_s, kwargs=later.tries.as_kwargs())
    except Reject as rej:
        logger.warning(
            "cannot publish the retry (%s); keeping the batch, next try here in %.1f s", rej.reason, later.countdown_s
        )
    time.sleep(later.countdown_s)


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
