"""How one delivery of a batch is handled: deliveries counted in the broker's Redis, retries counted per kind in the
task's own arguments, and the policy that turns both into a mode. The only Redis writes a worker makes itself."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from enum import StrEnum

import redis

__all__ = ["DAY_S", "DeliveryCounter", "Limits", "Mode", "Tries", "delivery_key", "plan"]

logger = logging.getLogger(__name__)

DAY_S = 86_400  # a batch delivered again after a day is counted from scratch


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
