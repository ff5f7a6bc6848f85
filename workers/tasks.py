"""Celery tasks: thin wrappers that decode, delegate to workers.deliveries / workers.averages, and summarise. An
ingest task carries a reference into the outbox (workers/outbox.py); a whole batch in the message (an older feed, a
foreign producer) is still handled as before."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry

from models.coldstore import ARCHIVE_TASK
from models.errors import TransientStorageError
from models.settings import get_settings
from models.vocabulary import AVERAGES_TASK, INGEST_TASK, RETENTION_TASK
from workers import averages
from workers.app import app, get_engine
from workers.archive import archive_closed_days
from workers.deliveries import DeliveryCounter, Limits, RetryLater, Tries, deliver
from workers.envelope import batch_key
from workers.metrics import queue_state
from workers.outbox import Outbox, Ref, reference
from workers.retention import RetentionResult, RetentionRun, run_retention

logger = logging.getLogger(__name__)

_S = get_settings()
_LIMITS = Limits(
    max_retries=_S.ingest_max_retries, poison_retries=_S.ingest_poison_retries, max_deliveries=_S.ingest_max_deliveries
)
_DELIVERIES = DeliveryCounter(app.conf.broker_url, key_prefix=_S.broker_key_prefix)
_OUTBOX = Outbox(app.conf.broker_url, key_prefix=_S.broker_key_prefix)
_REDIS_WAIT_S = (0.5, 5.0)  # first and longest wait while Redis cannot be read


# Retries are decided by workers.deliveries.deliver, with budgets per kind of failure in the task's kwargs; Celery's
# single counter is not used (max_retries=None).
@app.task(name=INGEST_TASK, bind=True, max_retries=None)
def ingest_batch(self: Task, batch: Any, outage_retries: int = 0, poison_retries: int = 0) -> dict[str, Any]:
    """Store one batch of frames, or record them as rejected, as workers.deliveries.deliver decides. `batch` is
    `{"batch_id", "seq"}` (the outbox) or the whole batch."""
    tries = Tries.from_args(outage_retries, poison_retries)
    ref = reference(batch)
    if ref is not None:
        return _ingest_ref(self, ref, tries)
    deliveries = _DELIVERIES.count(batch_key(batch))  # printable, bounded, stable across deliveries
    while True:
        step = deliver(get_engine(), batch, deliveries=deliveries, tries=tries, limits=_LIMITS, task_id=self.request.id)
        if not isinstance(step, RetryLater):
            return step
        _retry(self, step)
        tries = step.tries  # the retry could not be published: the next try is made here


def _ingest_ref(task: Task, ref: Ref, tries: Tries) -> dict[str, Any]:
    payload, deliveries = _take(ref)
    if payload is None:
        logger.debug("batch %s was completed by an earlier delivery", ref.batch_id)
        return {"batch_id": ref.batch_id, "completed_before": True}
    while True:
        task_id = task.request.id
        step = deliver(get_engine(), payload, deliveries=deliveries, tries=tries, limits=_LIMITS, task_id=task_id)
        if not isinstance(step, RetryLater):
            _OUTBOX.complete(ref.batch_id)
            return step
        if _retry_ref(task, ref, step):
            return {"batch_id": ref.batch_id, "completed_before": True}
        tries = step.tries  # the retry could not be published: the next try is made here


def _take(ref: Ref) -> tuple[Any, int | None]:
    """The payload and delivery count of `ref`, waiting while Redis cannot be read (the message cannot be
    acknowledged then either; if this worker dies meanwhile, the message is delivered again)."""
    wait, longest = _REDIS_WAIT_S
    while True:
        try:
            return _OUTBOX.take(ref)
        except (redis.RedisError, OSError) as exc:
            logger.warning("cannot read batch %s from the outbox (%s); trying again in %.1f s", ref.batch_id, exc, wait)
        time.sleep(wait)
        wait = min(wait * 2, longest)


def _retry_ref(task: Task, ref: Ref, later: RetryLater) -> bool:
    """Enqueue the retry through the outbox (a new sequence number, like every enqueue) and raise Celery's Retry,
    which acknowledges this message. A retry Redis refuses (full under noeviction, restarting) keeps the batch
    here, unacknowledged: wait `countdown_s` and return False for the next try here. True: another delivery of the
    batch completed it meanwhile, nothing is left to retry."""
    try:
        seq = _OUTBOX.requeue(
            ref.batch_id,
            tries=later.tries,
            task_id=task.request.id,
            retries=(task.request.retries or 0) + 1,
            countdown_s=later.countdown_s,
        )
    except (redis.RedisError, OSError) as exc:
        logger.warning(
            "cannot publish the retry (%s); keeping the batch, next try here in %.1f s", exc, later.countdown_s
        )
        time.sleep(later.countdown_s)
        return False
    if seq < 0:
        logger.debug("batch %s was completed by another delivery; no retry", ref.batch_id)
        return True
    raise Retry(exc=later.cause, when=later.countdown_s)


def _retry(task: Task, later: RetryLater) -> None:
    """Publish the retry of a whole-batch message (raises Celery's Retry). Celery turns a failed publish (Redis full
    under noeviction, Redis restarting) into Reject(requeue=False), and the broker would delete the batch; a requeue
    cannot be published either (and an unpublishable requeue stops the worker). So the batch stays here,
    unacknowledged: wait `countdown_s` and return for the next try. The one wait inside a worker slot, and only
    while Redis refuses writes."""
    try:
        raise task.retry(exc=later.cause, countdown=later.countdown_s, kwargs=later.tries.as_kwargs())
    except Reject as rej:
        logger.warning(
            "cannot publish the retry (%s); keeping the batch, next try here in %.1f s", rej.reason, later.countdown_s
        )
    time.sleep(later.countdown_s)


@app.task(name=AVERAGES_TASK, autoretry_for=(TransientStorageError,), retry_backoff=5, max_retries=3)
def compute_averages(window_s: int, now_s: float | None = None, grace_s: float | None = None) -> dict[str, Any]:
    """Upsert the closed `window_s` average-price windows (30 and 60 from beat); windows whose books still wait in
    the queue are left for a later run (up to BOOKFEED_AVERAGES_QUEUE_WAIT_S)."""
    s = get_settings()
    now = averages.now_s() if now_s is None else now_s
    result = averages.compute_averages(
        get_engine(),
        window_s=window_s,
        now_s=now,
        grace_s=s.averages_grace_s if grace_s is None else grace_s,
        lookback_s=s.averages_lookback_s,
        queued_from_s=_queued_from_s(now, s.averages_queue_wait_s),
    )
    logger.info("averages computed", extra=result.as_dict())
    return result.as_dict()


def _queued_from_s(now_s: float, wait_s: float) -> float | None:
    """The receive time of the oldest frame waiting in the outbox, for the averages to wait for; None when nothing
    waits, Redis does not answer (the averages do not wait on a broker in trouble) or wait_s is 0."""
    if wait_s <= 0:
        return None
    try:
        state = queue_state(_OUTBOX.redis(), _S.broker_key_prefix)
    except (redis.RedisError, OSError) as exc:
        logger.warning("cannot read the queue (%s); averages computed without waiting for queued books", exc)
        return None
    return averages.queued_from(state.oldest_received_ns, now_s=now_s, wait_s=wait_s)


@app.task(name=ARCHIVE_TASK)
def archive_days() -> dict[str, list[str]]:
    """Archive every closed UTC day not yet verified to BOOKFEED_ARCHIVE_URL (nothing when unset): workers.archive.
    A day that fails verification is retried by the next hourly run."""
    url = get_settings().archive_url
    if not url:
        return {"archived": [], "skipped": [], "failed": []}
    result = archive_closed_days(get_engine(), url)
    logger.info("archive run", extra={"n_days": len(result.archived), "failed": len(result.failed)})
    return result.as_dict()


@app.task(name=RETENTION_TASK)
def retention() -> dict[str, Any]:
    """Drop the day partitions older than BOOKFEED_RETENTION_DAYS (only days the archive verified when
    BOOKFEED_ARCHIVE_URL is set) and the ingest_batches rows no redelivery can need: workers.retention.run_retention.
    Beat sends it hourly on the `maintenance` queue; it needs the tables' owner, so a worker of the bookfeed_writer
    role fails it with RetentionError (logged, shown as failed in Flower) and drops nothing."""
    s = get_settings()
    if not s.retention_days:
        logger.warning("retention task received but BOOKFEED_RETENTION_DAYS is unset in this worker: nothing dropped")
        return RetentionRun(RetentionResult((), ())).as_dict()
    run = run_retention(get_engine(), retention_days=s.retention_days, archive_url=s.archive_url or None)
    r = run.retention
    logger.info(
        "retention (%d days): %d days dropped, %d kept, %d ingest batch records deleted",
        s.retention_days,
        len(r.dropped),
        len(r.refused),
        r.batches_deleted,
        extra={"n_days": len(r.dropped), "n_rows": r.batches_deleted},
    )
    return run.as_dict()
