"""The one home of the feed's publishing loop: a thread hands the outage buffer's batches to a `send` in order,
backing off while Redis is unreachable, holding frames while Redis is above its high-water mark, and at stop giving
up on what cannot be published, recorded as gaps. What waits lives in feed/outage.py, broker I/O in feed/broker.py."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from feed.broker import HighWater
from feed.outage import OutageBuffer, PendingBatch
from models.settings import Settings
from models.vocabulary import EXCHANGE

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)

_HOLD_S = 1.0  # while frames are held above the high-water mark, look again this often
_STOP_TRIES = 5  # after stop, failed sends (or holds) in a row before giving up on the frames left
_GIVE_UP_TRIES = 5  # then, tries to publish the gaps recording them...
_GIVE_UP_PAUSE_S = 1.0  # ...this far apart


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


class Publisher(OutageBuffer):
    """Ordered at-least-once hand-off of the buffer's batches (see OutageBuffer) to `send`, which raises on failure.

    A failed send is retried after a capped, jittered backoff that `stop` cuts short. While Redis is at or above
    `high_water` x maxmemory by `broker_memory()` (see feed.broker.HighWater), batches of frames are held (gap and
    rejection batches are tiny and still go). `sleep` paces the holding and the last tries at stop.
    """

    def __init__(
        self,
        send: Callable[[PendingBatch], None],
        *,
        max_buffered_frames: int,
        max_buffered_bytes: int = _default("buffer_max_bytes"),
        feed_id: str | None = None,
        exchange: str = EXCHANGE,
        sleep: Callable[[float], None] = time.sleep,
        broker_memory: Callable[[], tuple[int, int]] | None = None,
        high_water: float = _default("broker_high_water"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            max_buffered_frames=max_buffered_frames,
            max_buffered_bytes=max_buffered_bytes,
            feed_id=feed_id,
            exchange=exchange,
        )
        self._send = send
        self._sleep = sleep
        self._high_water = HighWater(broker_memory, mark=high_water, clock=clock, stats=self.stats)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        send: Callable[[PendingBatch], None],
        *,
        feed_id: str | None = None,
        broker_memory: Callable[[], tuple[int, int]] | None = None,
    ) -> Publisher:
        """The publisher `settings` describe (buffer_max_frames, buffer_max_bytes, broker_high_water)."""
        return cls(
            send,
            max_buffered_frames=settings.buffer_max_frames,
            max_buffered_bytes=settings.buffer_max_bytes,
            feed_id=feed_id,
            broker_memory=broker_memory,
            high_water=settings.broker_high_water,
        )

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set and the buffer is empty, or `stop` is set and publishing keeps failing or
        Redis stays above its high-water mark: then the frames left become gaps (see `_give_up`)."""
        failures = held = 0
        while True:
            with self._cond:
                while not self._has_work() and not stop.is_set():
                    self._cond.wait(0.2)
                if not self._has_work():
                    return
            above = self._high_water.above(self.pending_frames)
            head = self._take_head(healthy=failures == 0, frames_ok=not above)
            if head is None:  # only frames left, held above the high-water mark
                held += 1
                if stop.is_set() and held >= _STOP_TRIES:
                    self._give_up("Redis above high water")
                    return
                self._sleep(_HOLD_S)
                continue
            held = 0
            try:
                self._send(head)
            except Exception as exc:  # any broker error: keep the batch, back off, try again
                failures += 1
                delay = self._failed(exc, failures)
                if stop.is_set() and failures >= _STOP_TRIES:
                    self._give_up("broker unreachable")
                    return
                stop.wait(delay)  # a stop cuts the backoff short: the last tries follow at once
                continue
            if failures:
                logger.warning("publishing recovered after %d failures", failures)
                failures = 0
            self._sent(head)

    def _failed(self, exc: Exception, failures: int) -> float:
        """Count a failed send; the delay before the next try."""
        self._not_sent()
        self.stats.send_failures += 1
        delay: float = min(10.0, 0.1 * 2.0 ** min(failures, 7)) * random.uniform(0.5, 1.0)
        log = logger.warning if failures == 1 or failures % 20 == 0 else logger.debug
        log(
            "publishing failed (%s: %s); %d frames buffered, retry in %.1fs",
            type(exc).__name__,
            exc,
            self.pending_frames(),
            delay,
        )
        return delay

    def _sent(self, head: PendingBatch) -> None:
        super()._sent(head)
        self._high_water.published(head.n_bytes)  # 0 for gap and rejection batches

    def _give_up(self, why: str) -> None:
        """At stop, frames that cannot be published: record them as gaps (see `_abandon_frames`), then try a few
        times to publish the gaps and rejections, which are small."""
        n_frames, n_streams = self._abandon_frames()
        logger.error(
            "stopping with %d frames unpublished: %s; recorded as gaps of %d streams", n_frames, why, n_streams
        )
        for attempt in range(_GIVE_UP_TRIES):
            if attempt:
                self._sleep(_GIVE_UP_PAUSE_S)
            if self._send_control():
                return
        n_gaps, n_rejected = self._unpublished_control()
        logger.error("stopping with %d gaps and %d feed rejections unpublished: %s", n_gaps, n_rejected, why)

    def _send_control(self) -> bool:
        """Send the pending gap and rejection batches; False at the first failure."""
        while True:
            head = self._take_head(healthy=True, frames_ok=False)
            if head is None:
                return True
            try:
                self._send(head)
            except Exception as exc:  # any broker error: the caller tries again a little later
                self._not_sent()
                self.stats.send_failures += 1
                logger.warning("publishing the last gaps failed (%s: %s)", type(exc).__name__, exc)
                return False
            self._sent(head)
