"""Keeps a batch that Redis delivered while at its memory limit.

kombu's Redis transport pops a message (BRPOP, allowed under `maxmemory` with noeviction since it frees memory) and
only then records it as unacknowledged (`QoS.append`: ZADD unacked_index + HSET unacked in one MULTI). Under OOM that
write is refused, the error escapes as a channel error, the worker exits, and the message is in neither the queue nor
the unacked hash: lost. `install()` wraps `QoS.append` so the same write is retried with a backoff until Redis has
room again; the message is held in memory meanwhile and the original `append` ends as it always does.

Any other error there (the broker connection lost or released while the event loop still handles a popped message:
chaos drills saw kombu fail with AttributeError on a released connection) would lose the message the same way, so
before the error propagates the message is pushed back onto its queue with a client of our own (retried for up to
a minute). If that write had in fact reached Redis, the batch is delivered twice, which its batch id makes
harmless."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError, ResponseError

from models.errors import ConfigError

__all__ = ["install", "is_installed", "is_oom", "uninstall"]

logger = logging.getLogger(__name__)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0
LOG_EVERY_S = 30.0
RETURN_FOR_S = 60.0  # how long to try to push a message back after a non-OOM failure
_MARK = "_bookfeed_oom_guard"

_original: Callable[..., Any] | None = None
_broker_url: Callable[[], str] | None = None  # read when needed: the app's config loads lazily


def is_oom(exc: BaseException) -> bool:
    """Redis refused a write because it is at `maxmemory` (noeviction)."""
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, ResponseError) and ("OOM" in str(exc)[:8] or "maxmemory" in str(exc))


def _guarded(original: Callable[..., Any], sleep: Callable[[float], None]) -> Callable[..., Any]:
    @wraps(original)
    def append(self: Any, message: Any, delivery_tag: Any) -> Any:
        delay = FIRST_DELAY_S
        started: float | None = None
        logged = 0.0
        while True:
            try:
                # Safe to repeat: a refused MULTI wrote nothing and super().append was not reached; ZADD/HSET are
                # idempotent for the same tag.
                result = original(self, message, delivery_tag)
            except Exception as exc:
                if not is_oom(exc):
                    _return_to_queue(self, message, exc, sleep)
                    raise
                now = time.monotonic()
                if started is None or now - logged >= LOG_EVERY_S:
                    logger.warning(
                        "Redis is at its memory limit: holding delivered message %s until it can be recorded as "
                        "unacknowledged (for %.0f s so far): %s",
                        delivery_tag,
                        0.0 if started is None else now - started,
                        exc,
                    )
                    logged = now
                started = now if started is None else started
                sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            if started is not None:
                logger.warning(
                    "Redis has room again: message %s recorded as unacknowledged after %.1f s",
                    delivery_tag,
                    time.monotonic() - started,
                )
            return result

    setattr(append, _MARK, True)
    return append


def _return_to_queue(qos: Any, message: Any, exc: BaseException, sleep: Callable[[float], None]) -> None:
    """Push a popped message back onto its queue (Celery's queues are named by their routing key), with a client
    of our own: kombu's may be the one that just failed."""
    delivery = getattr(message, "delivery_info", None) or {}
    raw = getattr(message, "_raw", None)
    url = _broker_url() if _broker_url is not None else None
    if not url or raw is None or not delivery.get("routing_key"):
        logger.error("could not record or return delivered message (%s: %s); it may be lost", type(exc).__name__, exc)
        return
    channel = qos.channel
    key = getattr(channel, "global_keyprefix", "") + channel._q_for_pri(
        delivery["routing_key"], channel._get_message_priority(raw, reverse=False)
    )
    deadline, delay = time.monotonic() + RETURN_FOR_S, FIRST_DELAY_S
    while True:
        try:
            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            try:
                client.rpush(key, json.dumps(raw))  # the right end: BRPOP hands it out next
            finally:
                client.close()
        except redis.RedisError as push_error:
            if time.monotonic() >= deadline:
                logger.error(
                    "delivered message lost: recording failed (%s) and so did returning it (%s)", exc, push_error
                )
                return
            sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        logger.warning("recording a delivered message failed (%s: %s); returned it to %s", type(exc).__name__, exc, key)
        return


def is_installed() -> bool:
    return bool(getattr(getattr(kombu_redis.QoS, "append", None), _MARK, False))


def install(sleep: Callable[[float], None] = time.sleep, *, broker_url: Callable[[], str] | None = None) -> None:
    """Wrap kombu's Redis `QoS.append` (idempotent). Raises ConfigError if kombu no longer has it. `broker_url`
    returns where a message whose recording failed for another reason than OOM is pushed back (called only then)."""
    global _original, _broker_url
    if broker_url is not None:
        _broker_url = broker_url
    if is_installed():
        return
    original = getattr(getattr(kombu_redis, "QoS", None), "append", None)
    if not callable(original):
        raise ConfigError(
            "kombu.transport.redis.QoS.append not found: this kombu changed its Redis transport; "
            "workers.brokerguard cannot protect messages delivered while Redis is out of memory"
        )
    _original = original
    kombu_redis.QoS.append = _guarded(original, sleep)  # type: ignore[method-assign]


def uninstall() -> None:
    """Put kombu's own `QoS.append` back (tests)."""
    global _original
    if _original is not None:
        kombu_redis.QoS.append = _original  # type: ignore[method-assign]
        _original = None
