"""Keeps a batch that Redis delivered while at its memory limit.

kombu's Redis transport pops a message (BRPOP, allowed under `maxmemory` with noeviction since it frees memory) and
only then records it as unacknowledged (`QoS.append`: ZADD unacked_index + HSET unacked in one MULTI). Under OOM that
write is refused, the error escapes as a channel error, the worker exits, and the message is in neither the queue nor
the unacked hash: lost. `install()` wraps `QoS.append` so the same write is retried with a backoff until Redis has
room again; the message is held in memory meanwhile and the original `append` ends as it always does. Any other error
(connection lost, ...) propagates unchanged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError, ResponseError

from models.errors import ConfigError

__all__ = ["install", "is_installed", "is_oom", "uninstall"]

logger = logging.getLogger(__name__)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0
LOG_EVERY_S = 30.0
_MARK = "_bookfeed_oom_guard"

_original: Callable[..., Any] | None = None


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
            except ResponseError as exc:
                if not is_oom(exc):
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


def is_installed() -> bool:
    return bool(getattr(getattr(kombu_redis.QoS, "append", None), _MARK, False))


def install(sleep: Callable[[float], None] = time.sleep) -> None:
    """Wrap kombu's Redis `QoS.append` (idempotent). Raises ConfigError if kombu no longer has it."""
    global _original
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
