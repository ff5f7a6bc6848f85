"""The poison-batch policy, in one place: how one delivery of an ingest batch is handled. Deliveries are counted in the
broker's Redis (here for a whole batch in its message, by workers.outbox for a reference), retries per kind in the
task's own arguments; `plan`
turns both into a mode and `deliver` runs the ladder normal -> frame by frame -> rejected on workers.ingest's plain
functions. Nothing here knows Celery: a retry is returned as a RetryLater for workers/tasks.py to publish."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import redis
from sqlalchemy import Engine

from models.errors import InvalidBookError, TransientStorageError
from workers import ingest

__all__ = [
    "DAY_S",
    "MAX_BACKOFF_S",
    "DeliveryCounter",
    "Limits",
    "Mode",
    "RetryLater",
    "Tries",
    "backoff_s",
    "deliver",
    "delivery_key",
    "plan",
]

logger = logging.getLogger(__name__)

DAY_S = 86_400  # a batch delivered again after a day is counted from scratch
MAX_BACKOFF_S = 60.0  # below the broker visibility timeout, so a retry held as an ETA task is not redelivered


class Mode(StrEnum):
    NORMAL = "normal"  # one transaction for the whole batch
    FRAME_BY_FRAME = "frame by frame"  # each book in its own savepoint (ingest_batch(frame_by_frame=True))
    REJECT = "reject"  # every frame recorded as rejected, unparsed (ingest.reject_batch)


@dataclass(frozen=True, slots=True)
class Tries:
    """Retries this batch has had so far, per kind; they travel in the retried task's kwargs."""

    outage: int = 0  # PostgreSQL unavailable (TransientStorageError)
    poison: int = 0  # an unexpected error

    @property
    def planned(self) -> int:
        return self.outage + self.poison

    @classmethod
    def from_args(cls, outage: object, poison: object) -> Tries:
        """The counts a task received; anything but a count (a task from another producer) counts as no retry."""
        return cls(outage=_count(outage), poison=_count(poison))

    def as_kwargs(self) -> dict[str, int]:
        """The retried task's keyword arguments."""
        return {"outage_retries": self.outage, "poison_retries": self.poison}


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


@dataclass(frozen=True, slots=True)
class Limits:
    """Settings.ingest_max_retries, ingest_poison_retries and ingest_max_deliveries."""

    max_retries: int
    poison_retries: int
    max_deliveries: int


def plan(*, deliveries: int | None, tries: Tries, limits: Limits) -> Mode:
    """The mode of this attempt. `deliveries` counts every delivery of the batch (None: Redis could not count);
    those beyond the retries the task published itself are redeliveries (a killed worker, a visibility timeout).
    More than `max_deliveries` of them: frame by frame; two more: rejected. An unexpected error `poison_retries + 1`
    times: frame by frame; once more: rejected. Outages never change the mode."""
    unplanned = 0 if deliveries is None else max(0, deliveries - tries.planned)
    if unplanned > limits.max_deliveries + 2 or tries.poison > limits.poison_retries + 1:
        return Mode.REJECT
    if unplanned > limits.max_deliveries or tries.poison > limits.poison_retries:
        return Mode.FRAME_BY_FRAME
    return Mode.NORMAL


@dataclass(frozen=True, slots=True)
class RetryLater:
    """The batch is to be delivered again in `countdown_s` seconds, with `tries` in its arguments."""

    tries: Tries
    countdown_s: float
    cause: Exception


def backoff_s(retries: int) -> float:
    """Exponential backoff with full jitter before retry `retries + 1`: 0.5-1 s for the first (a PostgreSQL restart
    is over quickly), capped at MAX_BACKOFF_S."""
    return random.uniform(0.5, min(MAX_BACKOFF_S, 2.0**retries))


def deliver(
    engine: Engine, batch: Any, *, deliveries: int | None, tries: Tries, limits: Limits, task_id: str | None = None
) -> dict[str, Any] | RetryLater:
    """Handle one delivery of `batch`: store it in the mode `plan` gives, or record its frames as rejected. Returns
    the summary of what was done, or RetryLater. PostgreSQL unavailable: retried with backoff `max_retries` times,
    then the frames are rejected, or, while PostgreSQL is still down, retried every MAX_BACKOFF_S. An unreadable
    envelope: rejected at once. Any other error (a poison batch or a bug): retried `poison_retries` times, then
    stored frame by frame, then rejected, within this delivery. Raises only when rejecting fails too."""
    reason = f"delivered {deliveries} times without being stored"
    force: Mode | None = None  # the last resort, decided within this delivery
    while True:
        mode = force or plan(deliveries=deliveries, tries=tries, limits=limits)
        try:
            return _attempt(
                engine, batch, mode, reason, {"task_id": task_id, "mode": str(mode), "deliveries": deliveries}
            )
        except TransientStorageError as exc:
            if tries.outage >= limits.max_retries and mode is not Mode.REJECT:
                reason, force = f"not stored after {tries.outage} retries: {type(exc).__name__}: {exc}", Mode.REJECT
                continue
            tries = replace(tries, outage=tries.outage + 1)
            logger.warning("PostgreSQL unavailable (%s); retry %d", exc, tries.outage)
            last = tries.outage > limits.max_retries  # rejecting failed too: PostgreSQL is still down
            return RetryLater(tries, MAX_BACKOFF_S if last else backoff_s(tries.outage - 1), exc)
        except InvalidBookError as exc:  # the envelope is unreadable: no retry can help
            reason, force = f"unreadable batch: {exc}", Mode.REJECT
        except Exception as exc:  # a poison batch or a bug: a few tries, then frame by frame, then recorded
            if mode is Mode.REJECT:
                logger.exception("batch could not be recorded as rejected either")
                raise
            tries = replace(tries, poison=tries.poison + 1)
            reason = f"not stored after {tries.poison} failures: {type(exc).__name__}: {exc}"
            if tries.poison <= limits.poison_retries:
                logger.warning("batch failed (%s: %s); retry %d", type(exc).__name__, exc, tries.poison)
                return RetryLater(tries, backoff_s(tries.poison - 1), exc)
            next_mode = plan(deliveries=deliveries, tries=tries, limits=limits)
            logger.warning("batch failed %d times (%s); next: %s", tries.poison, exc, next_mode)


def _attempt(engine: Engine, batch: Any, mode: Mode, reason: str, summary: dict[str, Any]) -> dict[str, Any]:
    if mode is Mode.REJECT:
        n = ingest.reject_batch(engine, batch, reason=reason)
        if n:
            logger.error("batch not stored: %s; %d frames recorded as rejected", reason, n, extra=summary)
        else:
            logger.info("batch not rejected: an earlier delivery stored it", extra=summary)
        return {"rejected_batch": n}
    result = ingest.ingest_batch(engine, batch, frame_by_frame=mode is Mode.FRAME_BY_FRAME)
    logger.info("stored batch", extra={**summary, **result.as_dict()})
    return result.as_dict()


def delivery_key(batch_id: str, *, key_prefix: str = "") -> str:
    """`{prefix}bookfeed:deliveries:{batch_id}`; an id too long for a sane key is hashed."""
    ident = (
        batch_id
        if len(batch_id) <= 200
        else "sha256:" + hashlib.sha256(batch_id.encode("utf-8", "replace")).hexdigest()
    )
    return f"{key_prefix}bookfeed:deliveries:{ident}"


class DeliveryCounter:
    """Counts deliveries per batch id in the broker's Redis (INCR, expiring after a day). The client is made on first
    use in each process, never inherited across a fork."""

    def __init__(self, redis_url: str, *, key_prefix: str = "", timeout_s: float = 2.0) -> None:
        self._url, self._prefix, self._timeout_s = redis_url, key_prefix, timeout_s
        self._client: redis.Redis | None = None
        self._pid = 0

    def count(self, batch_id: object) -> int | None:
        """This delivery's number (1 for the first), or None when it cannot be counted (Redis full or away, no id):
        the caller then proceeds as on a first delivery."""
        if not isinstance(batch_id, str):
            return None
        try:
            pipe = self._redis().pipeline(transaction=False)
            key = delivery_key(batch_id, key_prefix=self._prefix)
            pipe.incr(key)
            pipe.expire(key, DAY_S)
            n, _ = pipe.execute()
            return int(n)
        except (redis.RedisError, OSError) as exc:
            logger.warning("cannot count deliveries of batch %s (%s); handling it as a first delivery", batch_id, exc)
            return None

    def _redis(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
            self._pid = os.getpid()
        return self._client
