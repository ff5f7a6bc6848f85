"""Beat's watch on the averages: a WARNING while books are being stored but no averages are computed (no worker
consumes the `metrics` queue). Reads PostgreSQL only; runs in the beat process, never in a worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, text

from models.errors import StorageError
from models.vocabulary import METRICS_QUEUE
from workers import storage

__all__ = ["WATCH_INTERVAL_S", "averages_lag_s", "check_averages", "start_averages_watch"]

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 60.0

# Books stored recently (ingest_batches.stored_at, indexed), and how far averages have been computed: the newest
# window end of any size, or, before any run, the first stored batch. Both sides tiny or index-only.
_LAG_SQL = text(
    "SELECT extract(epoch FROM now() - coalesce((SELECT max(computed_to) FROM averages_progress), "
    "  (SELECT min(stored_at) FROM ingest_batches))) "
    "WHERE EXISTS (SELECT 1 FROM ingest_batches WHERE stored_at > now() - make_interval(secs => :recent))"
)


def averages_lag_s(engine: Engine, *, recent_s: float) -> float | None:
    """Seconds since the end of the newest computed averages window, or None when no book was stored in the last
    `recent_s` seconds (nothing to average). Raises StorageError / TransientStorageError."""
    with storage.translate_errors(), engine.connect() as conn:
        lag = conn.execute(_LAG_SQL, {"recent": recent_s}).scalar()
    return None if lag is None else float(lag)


def check_averages(engine: Engine, *, stale_s: float) -> float | None:
    """Log a WARNING when averages are more than `stale_s` seconds behind while books arrive; returns that lag."""
    lag = averages_lag_s(engine, recent_s=stale_s)
    if lag is None or lag <= stale_s:
        return None
    logger.warning("averages stale for %.0f s: is a worker consuming the %r queue?", lag, METRICS_QUEUE)
    return lag


def start_averages_watch(
    engine: Callable[[], Engine], *, stale_s: float, interval_s: float = WATCH_INTERVAL_S
) -> threading.Event:
    """Check every `interval_s` seconds (the first after one interval: a beat just restarted lets workers catch up)
    in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            try:
                check_averages(engine(), stale_s=stale_s)
            except StorageError as exc:
                logger.warning("cannot check the averages: %s", exc)
            except Exception:  # the watch must never take beat down
                logger.exception("averages watch failed")

    threading.Thread(target=run, name="averages-watch", daemon=True).start()
    logger.info("watching averages (WARNING when more than %.0f s behind)", stale_s)
    return stop
