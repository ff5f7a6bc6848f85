"""Live push: after a batch is committed, publish its books' metrics on the Redis channel the API's `WS /v1/live`
listens to (models.live). Best effort and at most once: a failed publish is logged and never fails the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
import redis

from models.book import BookSnapshot
from models.columnar import Columns
from models.live import live_channel, live_item, live_items
from models.metrics import BookMetrics

__all__ = ["LivePublisher", "install", "publish_stored"]

logger = logging.getLogger(__name__)


class LivePublisher:
    """Publishes stored books on `<key prefix>bookfeed:live`, one PUBLISH per batch (subscribers split it)."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = "") -> None:
        self._client = client
        self._channel = live_channel(key_prefix)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "") -> LivePublisher:
        """A publisher with its own client; short timeouts, so a Redis in trouble delays a batch by at most ~1 s."""
        return cls(redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0), key_prefix=key_prefix)

    def publish(
        self, exchange: str, books: Sequence[tuple[BookSnapshot, BookMetrics]], columns: Columns | None = None
    ) -> int:
        """Publish the books of one committed batch (those of both parse paths); returns the subscribers reached
        (0 on failure, no books or nobody listening). The items are built only while somebody listens (one PUBSUB
        NUMSUB per batch): building them costs more than parsing the batch."""
        if not books and (columns is None or not len(columns)):
            return 0
        try:
            if not self._listeners():
                return 0
            items = [live_item(exchange, book, metrics) for book, metrics in books]
            if columns is not None:
                items.extend(live_items(exchange, columns))
            return int(self._client.publish(self._channel, orjson.dumps(items)))
        except redis.RedisError as exc:
            # The books are stored; only their live push is lost.
            n = len(books) + (len(columns) if columns is not None else 0)
            logger.warning("live push of %d book(s) failed: %s", n, exc)
            return 0

    def _listeners(self) -> int:
        """Clients subscribed to the channel now (the API subscribes one per open `WS /v1/live`)."""
        return sum(int(n) for _, n in self._client.pubsub_numsub(self._channel))

    def close(self) -> None:
        self._client.close()


# This process's publisher: set by workers.app in each worker process; unset (no push) in tests and benches that
# store batches without a worker.
_publisher: LivePublisher | None = None


def install(publisher: LivePublisher | None) -> None:
    """Make `publisher` the one publish_stored uses in this process (None: stop pushing); closes the previous one."""
    global _publisher
    if _publisher is not None and _publisher is not publisher:
        _publisher.close()
    _publisher = publisher


def publish_stored(
    exchange: str, books: Sequence[tuple[BookSnapshot, BookMetrics]], columns: Columns | None = None
) -> None:
    """Push the books of a committed batch, when this process has a publisher. Call only after the commit."""
    if _publisher is not None:
        _publisher.publish(exchange, books, columns)
