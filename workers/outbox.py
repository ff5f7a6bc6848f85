"""The outbox: ingest batches live in Redis by reference until a worker has committed them, so a task message that
Redis handed out and nobody recorded (a worker node SIGKILLed between kombu's BRPOP and its unacked note, or Redis
refusing that note at its memory limit) costs a late batch, never a lost one.

Keys under the broker prefix: `bookfeed:outbox:payload` (hash, batch id -> batch JSON, the only copy), `:seq` (zset,
batch id -> the sequence number of its place in the queue), `:meta` (hash, batch id -> "<message seq> <outage
retries> <poison retries>": the message's delivery tag is "<batch id>#<message seq>"), `:counter` (INCR), `:delivered`
(the highest message seq a worker started), `:suspects` and `:cursor` (the reaper's), `:reaped` (a count).

Every enqueue (the feed's publish, a worker's retry, the reaper's re-enqueue) takes its sequence number from one INCR
in the script that LPUSHes the message, so queue order is sequence order. A batch whose sequence is below the
delivered mark has therefore left the queue; if its message is not in kombu's unacked hash either, and stays so
between two reaper passes `grace_s` apart, it was lost: the reaper enqueues it again. kombu puts a message back in
the queue on a visibility timeout, a worker's shutdown or a lost pool process; `install_restore_hook` gives its batch
a new sequence number in the same transaction, so a message waiting in the queue is never taken for a lost one.

The scripts are in workers/outbox_lua.py, except the one enqueue script, which the feed shares: it lives with the
keys and the message builder in models/outbox.py.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError, ResponseError

from models.errors import ConfigError
from models.outbox import ENQUEUE_LUA, SEQ_MARK, OutboxKeys, message_parts
from workers.deliveries import DAY_S, Tries, delivery_key
from workers.outbox_lua import COMPLETE_LUA, DELIVER_LUA, REAP_LUA, RESEQUENCE_LUA

__all__ = [
    "ENQUEUE_LUA",
    "REAP_GRACE_S",
    "SEQ_MARK",
    "Outbox",
    "OutboxKeys",
    "Reaped",
    "Ref",
    "install_restore_hook",
    "is_oom",
    "message_parts",
    "reference",
    "restore_hook_installed",
]

logger = logging.getLogger(__name__)

REAP_GRACE_S = 30.0  # a batch is re-enqueued once it looked lost in two reaper passes this far apart
REAP_LIMIT = 1000  # outbox entries one reaper pass looks at (the next pass goes on from there)
_HOOK = "_bookfeed_outbox_restore"


@dataclass(frozen=True, slots=True)
class Ref:
    """What an outbox task message carries: the batch id and the message's own sequence number."""

    batch_id: str
    seq: int


def reference(arg: Any) -> Ref | None:
    """The Ref an ingest task's argument is, or None when it is a whole batch (an older feed, a foreign producer)."""
    if not (isinstance(arg, dict) and set(arg) == {"batch_id", "seq"}):
        return None
    batch_id, seq = arg["batch_id"], arg["seq"]
    if isinstance(batch_id, str) and 0 < len(batch_id) <= 200 and type(seq) is int and 0 <= seq < 2**53:
        return Ref(batch_id, seq)
    return None


def is_oom(exc: BaseException) -> bool:
    """Redis refused a write because it is at `maxmemory` (noeviction)."""
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, ResponseError) and ("OOM" in str(exc)[:8] or "maxmemory" in str(exc))


@dataclass(frozen=True, slots=True)
class Reaped:
    """One reaper pass: the delivered mark it used, the batches it looked at, those it enqueued again."""

    mark: int
    looked_at: int
    requeued: list[str]


class Outbox:
    """A worker's (or beat's) side of the outbox. The client is made on first use in each process, never inherited
    across a fork."""

    def __init__(self, redis_url: str, *, key_prefix: str = "", timeout_s: float = 5.0) -> None:
        self._url, self._timeout_s = redis_url, timeout_s
        self.keys = OutboxKeys(key_prefix)
        self._client: redis.Redis | None = None
        self._pid = 0

    def redis(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
            self._pid = os.getpid()
        return self._client

    def take(self, ref: Ref) -> tuple[Any, int | None]:
        """(payload, this delivery's number) of a delivered reference; payload None when the batch was completed
        (stored or recorded) before. Redis at its memory limit: the payload is read without counting (None).
        Raises RedisError / OSError when Redis cannot be read; ValueError for a payload that is not JSON."""
        try:
            raw, n = self.redis().eval(
                DELIVER_LUA,
                3,
                self.keys.payload,
                self.keys.delivered,
                delivery_key(ref.batch_id, key_prefix=self.keys.prefix),
                ref.batch_id,
                ref.seq,
                DAY_S,
            )
        except redis.RedisError as exc:
            if not is_oom(exc):
                raise
            logger.warning("Redis is full: batch %s taken without counting its delivery", ref.batch_id)
            raw, n = self.redis().hget(self.keys.payload, ref.batch_id), None
        return (None, None) if raw is None else (_loads(raw), None if n is None else int(n))

    def complete(self, batch_id: str) -> None:
        """Drop a committed batch from the outbox, in one script (deletes only: Redis runs it at its memory limit,
        where it refuses even an HDEL queued in MULTI). A failure is logged: the reaper enqueues the batch again
        later, and its claim makes that delivery a no-op."""
        k = self.keys
        try:
            counter = delivery_key(batch_id, key_prefix=k.prefix)
            self.redis().eval(COMPLETE_LUA, 5, k.payload, k.seq, k.meta, k.suspects, counter, batch_id)
        except (redis.RedisError, OSError) as exc:
            logger.warning(
                "batch %s stored, not removed from the outbox (%s): a redelivery will find it", batch_id, exc
            )

    def requeue(
        self,
        batch_id: str,
        *,
        tries: Tries,
        task_id: str | None = None,
        retries: int = 0,
        countdown_s: float = 0.0,
        expect_seq: str = "",
    ) -> int:
        """Enqueue a batch already in the outbox again (a retry, due in `countdown_s`; or a lost message). Returns
        its new sequence number, -1 when it was completed meanwhile, -2 when its sequence is no longer
        `expect_seq`. Raises what Redis raises (OOM included)."""
        eta = (datetime.now(UTC) + timedelta(seconds=countdown_s)).isoformat() if countdown_s > 0 else None
        parts = message_parts(
            batch_id=batch_id,
            task_id=task_id or str(uuid.uuid4()),
            kwargs=tries.as_kwargs(),
            retries=retries,
            eta=eta,
        )
        args: list[str | int] = [batch_id, "", expect_seq, tries.outage, tries.poison, *parts]
        return int(self.redis().eval(ENQUEUE_LUA, 5, *self.keys.enqueue_keys(), *args))

    def reap(self, *, grace_s: float = REAP_GRACE_S, limit: int = REAP_LIMIT, now: float | None = None) -> Reaped:
        """One reaper pass (see the module docstring); lost batches are enqueued again, each with a WARNING. Raises
        what Redis raises."""
        k = self.keys
        keys = [k.seq, k.meta, k.counter, k.delivered, k.suspects, k.unacked, k.queue, k.cursor]
        stamp = f"{time.time() if now is None else now:.3f}"
        mark, looked_at, lost = self.redis().eval(REAP_LUA, len(keys), *keys, stamp, grace_s, limit)
        requeued: list[str] = []
        for i in range(0, len(lost), 3):
            batch_id, seq, meta = (v.decode() if isinstance(v, bytes) else str(v) for v in lost[i : i + 3])
            tries = _tries(meta)
            new = self.requeue(batch_id, tries=tries, expect_seq=seq)
            if new > 0:
                self.redis().incr(k.reaped)
                requeued.append(batch_id)
                logger.warning(
                    "batch %s: its task message left the queue (sequence %s, delivered mark %d) and reached no "
                    "worker; enqueued again as %d",
                    batch_id,
                    seq,
                    int(mark),
                    new,
                )
        return Reaped(int(mark), int(looked_at), requeued)

    def pending(self) -> int:
        """Batches in the outbox (queued, in a worker, or lost and not yet enqueued again)."""
        return int(self.redis().zcard(self.keys.seq))


def _loads(raw: bytes | str) -> Any:
    """A batch payload read from JSON: orjson (about 5 times faster than json on a 200-frame batch); json for what
    orjson refuses and json reads (lone surrogate escapes, NaN), so every payload reads as before. One difference is
    left: an integer beyond 64 bits reads as a float, and every such field (a time in ns) is refused either way."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _tries(meta: str) -> Tries:
    fields = meta.split()
    if len(fields) == 3 and all(f.isdigit() for f in fields[1:]):
        return Tries(outage=int(fields[1]), poison=int(fields[2]))
    return Tries()


def _restoring(original: Callable[..., Any]) -> Callable[..., Any]:
    def _do_restore_message(
        self: Any, payload: Any, exchange: Any, routing_key: Any, pipe: Any, leftmost: bool = False
    ) -> Any:
        headers = payload.get("headers") if isinstance(payload, dict) else None
        batch_id = headers.get("bookfeed_outbox") if isinstance(headers, dict) else None
        if isinstance(batch_id, str):
            keys = OutboxKeys(getattr(self, "global_keyprefix", "") or "")
            # EVAL is not among the commands kombu prefixes: the keys go prefixed already.
            pipe.eval(RESEQUENCE_LUA, 3, keys.seq, keys.counter, keys.suspects, batch_id)
        return original(self, payload, exchange, routing_key, pipe, leftmost)

    setattr(_do_restore_message, _HOOK, True)
    return _do_restore_message


def restore_hook_installed() -> bool:
    return bool(getattr(getattr(kombu_redis.Channel, "_do_restore_message", None), _HOOK, False))


def install_restore_hook() -> None:
    """Wrap kombu's Redis `Channel._do_restore_message` (idempotent) so that a message kombu puts back in the queue
    gives its batch a new sequence number in the same MULTI. Raises ConfigError if kombu no longer has it."""
    if restore_hook_installed():
        return
    original = getattr(kombu_redis.Channel, "_do_restore_message", None)
    if not callable(original):
        raise ConfigError(
            "kombu.transport.redis.Channel._do_restore_message not found: this kombu changed its Redis transport; "
            "workers.outbox cannot tell a requeued message from a lost one"
        )
    kombu_redis.Channel._do_restore_message = _restoring(original)  # type: ignore[method-assign]
