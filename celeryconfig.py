"""Celery settings for bookfeed (lowercase module settings, loaded by workers.app). Each choice names the failure
it covers; see README "Delivery promise"."""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from models.coldstore import ARCHIVE_TASK
from models.errors import ConfigError
from models.messages import transport_options
from models.settings import get_settings
from models.vocabulary import (
    AVERAGES_TASK,
    INGEST_QUEUE,
    INGEST_TASK,
    MAINTENANCE_QUEUE,
    METRICS_QUEUE,
    QUEUES,
    RETENTION_TASK,
    WINDOWS_S,
)
from workers.schedules import Aligned

try:
    _settings = get_settings()
    # Required, as for the feed: a worker or beat quietly using some localhost Redis would serve nobody's queue.
    broker_url = _settings.require_redis_url()
except ConfigError as _exc:  # one readable line instead of a traceback from the celery command
    raise SystemExit(f"bookfeed: {_exc}") from None

broker_connection_retry_on_startup = True
# Redis at its memory limit (noeviction) refuses the ack/reject/requeue writes with OOM, a channel error: by default
# the worker exits ("Unrecoverable error: OutOfMemoryError"). Restart the consumer instead; the message stays in the
# unacked hash and comes back after the visibility timeout. (A message popped while Redis refuses kombu's unacked
# note is in neither place: its batch stays in the outbox and beat's reaper enqueues it again, workers/outbox.py.)
broker_channel_error_retry = True
broker_transport_options = {
    # A reserved but unacknowledged task (its worker died, or lost Redis) is redelivered after this long: far longer
    # than a batch takes (well under 1 s) and than the longest retry countdown (60 s), so a live task is not run
    # twice in practice; a redelivery would store nothing anyway (batch ids are claimed in the same transaction).
    "visibility_timeout": _settings.visibility_timeout_s,
    **transport_options(_settings.broker_key_prefix),
}

# Results are never read: storing them would only fill Redis.
task_ignore_result = True
result_backend = None

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Acknowledge after the batch is committed: a worker that dies mid-batch leaves the task to be delivered again.
task_acks_late = True
# ...and when the child process is killed (SIGKILL, OOM) requeue the task instead of acknowledging it as failed.
task_reject_on_worker_lost = True
# One reserved task per process: a dying worker strands at most one batch per child until redelivery.
worker_prefetch_multiplier = 1
# Ingest retries (PostgreSQL down) must not be held as ETA tasks longer than the visibility timeout.
task_default_retry_delay = 2

task_default_queue = INGEST_QUEUE
# Declared, so `celery -A workers worker` without -Q consumes both (only the default queue otherwise, and averages
# would wait on `metrics` forever); `-Q ingest` / `-Q metrics` still pick one. Exchange and routing key as Celery
# makes them for an undeclared queue, so the feed (which declares nothing) publishes to the same bindings.
task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
    for name in QUEUES
)
task_routes = {
    INGEST_TASK: {"queue": INGEST_QUEUE},
    AVERAGES_TASK: {"queue": METRICS_QUEUE},
    ARCHIVE_TASK: {"queue": METRICS_QUEUE},
    RETENTION_TASK: {"queue": MAINTENANCE_QUEUE},
}

# Flower needs task events.
worker_send_task_events = True
task_send_sent_event = False
worker_hijack_root_logger = False

# Exactly one beat runs these (docker-compose pins beat to one replica). A second beat by mistake is harmless: the
# tasks upsert the same rows. One entry per window size, on the clock: a second after each window closes (its end
# plus the grace), the sizes 15 s apart, so that two sizes never scan books at the same instant (at the whole market
# that stalled storing for seconds); `expires` (5/6 of the period) drops runs that could not start in time instead
# of piling them up.
AVERAGES_SPREAD_S = 15.0
beat_schedule: dict[str, dict[str, Any]] = {
    f"price-averages-{w}s": {
        "task": AVERAGES_TASK,
        "schedule": Aligned(w, (_settings.averages_grace_s + 1.0 + i * AVERAGES_SPREAD_S) % w),
        "kwargs": {"window_s": w},
        "options": {"expires": w * 5 // 6, "queue": METRICS_QUEUE},
    }
    for i, w in enumerate(WINDOWS_S)
}
# The cold archive (workers.archive): each closed UTC day to BOOKFEED_ARCHIVE_URL, hourly; a no-op when unset. Runs
# that overlap (a redelivery past the visibility timeout, `bookfeed archive` at the same time) are serialised by a
# PostgreSQL advisory lock: the later one does nothing.
beat_schedule["cold-archive"] = {
    "task": ARCHIVE_TASK,
    "schedule": 3600.0,
    "kwargs": {},
    "options": {"expires": 3000, "queue": METRICS_QUEUE},
}
# Retention (workers.retention), hourly at half past, when BOOKFEED_RETENTION_DAYS is set for beat: on the
# `maintenance` queue, which only a worker connected as the tables' owner should consume (dropping a partition is
# DDL). Unset, nothing is sent, so no message waits on a queue nobody may consume. A run is idempotent, and one at a
# time runs (an advisory lock: a second one, e.g. `bookfeed archive` at the same moment, does nothing).
RETENTION_PERIOD_S = 3600
if _settings.retention_days:
    beat_schedule["retention"] = {
        "task": RETENTION_TASK,
        "schedule": Aligned(RETENTION_PERIOD_S, RETENTION_PERIOD_S / 2),
        "kwargs": {},
        "options": {"expires": RETENTION_PERIOD_S * 5 // 6, "queue": MAINTENANCE_QUEUE},
    }
