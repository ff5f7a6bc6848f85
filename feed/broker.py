"""The one home of the feed's broker I/O: the publish-only Celery app, the sender of batches (each into the outbox:
its payload once in Redis, and a task message carrying only a reference, by name: the feed never imports worker code),
and the Redis memory probe behind the high-water hold.

The outbox's layout and its guarantees are described in workers/outbox.py; its keys, enqueue script and message
builder, shared with the workers, are in models/outbox.py."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import orjson
import redis
from celery import Celery

from models.messages import transport_options
from models.outbox import ENQUEUE_LUA, FIRST_DELIVERY, OutboxKeys, message_parts

if TYPE_CHECKING:
    from feed.outage import PendingBatch

__all__ = [
    "CelerySender",
    "HighWater",
    "broker_app",
    "make_celery_sender",
]

logger = logging.getLogger(__name__)

_CHECK_S = 1.0  # the high-water check (INFO memory) runs at most this often...
_CHECK_BYTES = 1 << 20  # ...or after this many bytes of frames published, so a backlog cannot overshoot


def broker_app(redis_url: str, *, key_prefix: str = "", name: str = "bookfeed-feed") -> Celery:
    """A Celery app that only publishes (tasks by name), configured like the workers' broker side."""
    app = Celery(name, broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            **transport_options(key_prefix),
            # Frames are text already: skip kombu's base64 layer (a third more bytes in Redis, and CPU).
            "body_encoding": None,
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
        },
    )
    return app


class CelerySender:
    """A `send` for Publisher: each batch into the outbox, its payload once in Redis and a `bookfeed.ingest_batch`
    task carrying `{"batch_id", "seq"}`, in one script (so a publish is whole or absent; one repeated after a lost
    reply pushes nothing twice)."""

    def __init__(self, redis_url: str, *, key_prefix: str = "") -> None:
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=3)
        self._keys = OutboxKeys(key_prefix).enqueue_keys()

    def __call__(self, pending: PendingBatch) -> None:
        batch = pending.batch
        batch_id = batch["batch_id"]
        parts = message_parts(batch_id=batch_id, task_id=str(uuid.uuid4()), kwargs=FIRST_DELIVERY)
        payload = _dumps(batch)
        seq = self.redis.eval(ENQUEUE_LUA, 5, *self._keys, batch_id, payload, "", 0, 0, *parts)
        if not seq:
            logger.debug("batch %s was in the outbox already (an earlier try went through)", batch_id)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> CelerySender:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def memory(self) -> tuple[int, int]:
        """(used_memory, maxmemory) of the Redis the tasks go to, over the sender's own client. Raises what the
        broker raises."""
        info = self.redis.info("memory")
        return int(info["used_memory"]), int(info.get("maxmemory", 0))


def _dumps(batch: object) -> bytes | str:
    """The batch's JSON: orjson (several times faster than json on frame text, which is all quotes to escape), or
    json for what orjson refuses (an int beyond 64 bits: never one of ours, but a payload is never lost to it)."""
    try:
        return orjson.dumps(batch)
    except TypeError:
        return json.dumps(batch, separators=(",", ":"))


def make_celery_sender(redis_url: str, *, key_prefix: str = "") -> CelerySender:
    """A `send` for Publisher whose `memory` method is the matching `broker_memory`."""
    return CelerySender(redis_url, key_prefix=key_prefix)


class HighWaterStats(Protocol):
    paused_high_water: bool
    high_water_pauses: int
    high_water_check_failures: int


class HighWater:
    """Whether Redis is at or above `mark` x maxmemory, from `broker_memory()` = (used_memory, maxmemory), e.g.
    CelerySender.memory. It is asked at most once a second, or sooner once 1 MiB of frames were `published`; in
    between the last answer holds. No probe, or no maxmemory: never above. A failing probe counts as "below" (a
    WARNING once per run of failures). Counts go to `stats`."""

    def __init__(
        self,
        broker_memory: Callable[[], tuple[int, int]] | None,
        *,
        mark: float,
        clock: Callable[[], float],
        stats: HighWaterStats,
    ) -> None:
        self.mark = mark
        self._broker_memory, self._clock, self._stats = broker_memory, clock, stats
        self._next_check = 0.0
        self._bytes_since_check = 0
        self._failing = False

    def published(self, n_bytes: int) -> None:
        self._bytes_since_check += n_bytes

    def above(self, buffered_frames: Callable[[], int]) -> bool:
        """The answer (asking the broker if due); `buffered_frames` is for the log line when holding starts."""
        if self._broker_memory is None:
            return False
        now = self._clock()
        if now < self._next_check and self._bytes_since_check < _CHECK_BYTES:
            return self._stats.paused_high_water
        self._next_check = now + _CHECK_S
        self._bytes_since_check = 0
        used, maxmemory = self._probe(self._broker_memory)
        above = maxmemory > 0 and used >= self.mark * maxmemory
        if above and not self._stats.paused_high_water:
            self._stats.high_water_pauses += 1
            logger.warning(
                "Redis above its high-water mark (%d of %d bytes, mark %.0f%%): holding batches, %d frames buffered",
                used,
                maxmemory,
                self.mark * 100,
                buffered_frames(),
            )
        elif not above and self._stats.paused_high_water:
            logger.warning("Redis below its high-water mark again (%d of %d bytes): publishing", used, maxmemory)
        self._stats.paused_high_water = above
        return above

    def _probe(self, broker_memory: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        try:
            used, maxmemory = broker_memory()
        except Exception as exc:  # any broker error: unknown, keep publishing (a failing send is handled)
            self._stats.high_water_check_failures += 1
            log = logger.debug if self._failing else logger.warning
            log("high-water check failed (%s: %s): publishing unchecked", type(exc).__name__, exc)
            self._failing = True
            return 0, 0
        if self._failing:
            logger.warning("high-water check works again")
        self._failing = False
        return used, maxmemory
