"""What beat watches besides its schedule, each in a daemon thread of the beat process (never in a worker): the
averages (a WARNING while books are being stored but no averages are computed: no worker consumes the `metrics`
queue; reads PostgreSQL only) and the outbox (workers.outbox's reaper: task messages lost between Redis and a worker
are enqueued again)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
from sqlalchemy import Engine, text

from models.errors import StorageError
from models.vocabulary import METRICS_QUEUE
from workers import storage
from workers.outbox import REAP_GRACE_S, Outbox

__all__ = [
    "REAP_INTERVAL_S",
    "WATCH_INTERVAL_S",
    "averages_lag_s",
    "check_averages",
    "start_averages_watch",
    "start_outbox_reaper",
]

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 60.0
REAP_INTERVAL_S = 10.0  # a lost message is enqueued again REAP_GRACE_S to REAP_GRACE_S + 2 intervals after it is seen

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


def start_outbox_reaper(
    outbox: Outbox, *, interval_s: float = REAP_INTERVAL_S, grace_s: float = REAP_GRACE_S
) -> threading.Event:
    """Run `outbox.reap` every `interval_s` seconds in a daemon thread; set the returned event to stop it. A second
    beat by mistake reaps too: harmless, a re-enqueue happens only if the batch's sequence has not moved."""
    stop = threading.Event()

    def run() -> None:
        failing = False
        while not stop.wait(interval_s):
            try:
                outbox.reap(grace_s=grace_s)
            except (redis.RedisError, OSError) as exc:  # Redis away or full: the next pass tries again
                (logger.debug if failing else logger.warning)("outbox reaper cannot reach Redis: %s", exc)
                failing = True
                continue
            except Exception:  # the reaper must never take beat down
                logger.exception("outbox reaper failed")
            failing = False

    threading.Thread(target=run, name="outbox-reaper", daemon=True).start()
    logger.info("reaping the outbox every %.0f s (grace %.0f s)", interval_s, grace_s)
    return stop
