"""The workers' Prometheus metrics: `/metrics` on BOOKFEED_WORKER_METRICS_PORT, served by each worker node's main
process across its prefork pool (prometheus_client's multiprocess mode, one fresh directory per node), from Celery
signals only; plus the broker's queues read at scrape time (`queue_state`, which `bookfeed status` shares).
Connected when imported (workers.app imports it); in any process but a worker node it does nothing."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery.signals import (
    task_failure,
    task_prerun,
    task_retry,
    task_success,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from models.settings import get_settings
from models.vocabulary import AVERAGES_TASK, INGEST_TASK, QUEUES, WINDOWS_S
from workers.outbox import OutboxKeys, reference

__all__ = ["MULTIPROC_ENV", "QueueState", "queue_state"]

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Store and receive->commit times: a batch takes tens of ms; a backlog or an outage makes it minutes.
_STORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_DB_SIZE_EVERY_S = 60.0  # pg_database_size walks the data directory: not at every scrape
# Outbox entries read for the oldest waiting frame: a feed (re)starts with a few batches of gaps only (no frame).
_OLDEST_LOOKED_AT = 32
_FIRST_FRAME = re.compile(r'"frames":\s*\[\s*\[\s*(\d+)')
# The head of each batch's payload (its first frame's received_ns is in the first few hundred bytes).
_HEADS_LUA = """
local out = {}
for i, id in ipairs(ARGV) do
  local p = redis.call('HGET', KEYS[1], id)
  out[i] = p and string.sub(p, 1, 400) or ''
end
return out
"""


@dataclass(frozen=True, slots=True)
class QueueState:
    """The broker's view of the work waiting: tasks per queue, reserved and unacknowledged, batches in the outbox
    (not yet committed), and the receive time (ns) of the oldest frame among the oldest of those (None: none)."""

    depth: dict[str, int]
    unacked: int
    outbox: int
    oldest_received_ns: int | None

    def oldest_age_s(self, now_ns: int | None = None) -> float:
        """Seconds since the oldest waiting batch's first frame was received (0.0 when nothing waits)."""
        if self.oldest_received_ns is None:
            return 0.0
        return max(0.0, ((now_ns or time.time_ns()) - self.oldest_received_ns) / 1e9)


def queue_state(client: redis.Redis, prefix: str = "") -> QueueState:
    """Read the queues of the deployment under `prefix` (raises redis.RedisError when Redis does not answer)."""
    keys = OutboxKeys(prefix)
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(prefix + queue)
    pipe.hlen(keys.unacked)
    pipe.zcard(keys.seq)
    pipe.zrange(keys.seq, 0, _OLDEST_LOOKED_AT - 1)
    *lengths, unacked, outbox, oldest = pipe.execute()
    received: list[int] = []
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in oldest]
    if ids:
        for head in client.eval(_HEADS_LUA, 1, keys.payload, *ids):
            m = _FIRST_FRAME.search(head.decode("utf-8", "replace") if isinstance(head, bytes) else str(head))
            if m:
                received.append(int(m.group(1)))
    return QueueState(
        depth={q: int(n) for q, n in zip(QUEUES, lengths, strict=True)},
        unacked=int(unacked),
        outbox=int(outbox),
        oldest_received_ns=min(received) if received else None,
    )


class _QueueCollector(Collector):
    """Queue depth and the oldest waiting batch, read from Redis at each scrape (by the node's main process), and
    the database's size, read at most every _DB_SIZE_EVERY_S."""

    def __init__(self, redis_url: str, prefix: str, database_url: str | None) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self._database_url = database_url
        self._engine: Engine | None = None
        self._db_size: tuple[float, float | None] = (0.0, None)  # (monotonic time read, bytes)

    def _database_bytes(self) -> float | None:
        read_at, size = self._db_size
        if self._database_url is None or time.monotonic() - read_at < _DB_SIZE_EVERY_S:
            return size
        if self._engine is None:
            # No pool: a connection held open would be inherited by pool processes forked later.
            self._engine = create_engine(self._database_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
        try:
            with self._engine.connect() as conn:
                size = float(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        except SQLAlchemyError as exc:
            logger.warning("cannot read the database size for /metrics: %s", str(exc).splitlines()[0])
            size = None
        self._db_size = (time.monotonic(), size)
        return size

    def collect(self) -> Iterator[Metric]:
        size = self._database_bytes()
        if size is not None:
            yield GaugeMetricFamily("bookfeed_database_size_bytes", "pg_database_size of the database", value=size)
        try:
            state = queue_state(self._client, self._prefix)
        except (redis.RedisError, OSError) as exc:
            logger.warning("cannot read the queues for /metrics: %s", exc)
            yield GaugeMetricFamily("bookfeed_broker_up", "1 when Redis answered this scrape", value=0.0)
            return
        yield GaugeMetricFamily("bookfeed_broker_up", "1 when Redis answered this scrape", value=1.0)
        depth = GaugeMetricFamily("bookfeed_queue_depth", "Tasks waiting in each queue", labels=["queue"])
        for queue, n in state.depth.items():
            depth.add_metric([queue], n)
        yield depth
        yield GaugeMetricFamily(
            "bookfeed_queue_unacked", "Tasks reserved by workers, not yet acknowledged", value=state.unacked
        )
        yield GaugeMetricFamily("bookfeed_outbox_batches", "Ingest batches not yet committed", value=state.outbox)
        yield GaugeMetricFamily(
            "bookfeed_queue_oldest_batch_age_seconds",
            "Seconds since the first frame of the oldest batch not yet committed was received (0: none waits)",
            value=state.oldest_age_s(),
        )


class _DeadProcesses(Collector):
    """Marks pool processes that died without their shutdown signal (SIGKILL, OOM) as dead before each scrape, so
    their live gauges (bookfeed_worker_processes) stop counting. Yields nothing."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        for path in self._directory.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), str(self._directory))  # type: ignore[no-untyped-call]
        yield from ()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


@dataclass
class _Metrics:
    """The per-process series (multiprocess mode: each pool process writes its own file; the main process sums)."""

    stored: Counter = field(
        default_factory=lambda: Counter("bookfeed_frames_stored", "Frames stored in PostgreSQL (books)")
    )
    rejected: Counter = field(
        default_factory=lambda: Counter(
            "bookfeed_frames_rejected",
            "Frames recorded as rejected: invalid (refused on their own) or given_up (their batch, after retries)",
            ["reason"],
        )
    )
    batches: Counter = field(
        default_factory=lambda: Counter("bookfeed_batches", "Ingest batches handled, by outcome", ["outcome"])
    )
    store_seconds: Histogram = field(
        default_factory=lambda: Histogram(
            "bookfeed_batch_store_seconds", "Seconds to parse and store one batch", buckets=_STORE_BUCKETS
        )
    )
    receive_to_commit: Histogram = field(
        default_factory=lambda: Histogram(
            "bookfeed_receive_to_commit_seconds",
            "Seconds from the feed receiving a batch's first frame to the batch's commit",
            buckets=_LAG_BUCKETS,
        )
    )
    retries: Counter = field(default_factory=lambda: Counter("bookfeed_task_retries", "Task retries", ["task"]))
    give_ups: Counter = field(
        default_factory=lambda: Counter(
            "bookfeed_ingest_give_ups", "Batches whose frames were recorded as rejected instead of stored"
        )
    )
    failures: Counter = field(default_factory=lambda: Counter("bookfeed_task_failures", "Tasks that raised", ["task"]))
    averages_to: Gauge = field(
        default_factory=lambda: Gauge(
            "bookfeed_averages_computed_to_seconds",
            "Unix time up to which closed average windows have been computed, per window size",
            ["window_seconds"],
            multiprocess_mode="max",
        )
    )
    processes: Gauge = field(
        default_factory=lambda: Gauge("bookfeed_worker_processes", "Pool processes alive", multiprocess_mode="livesum")
    )

    def __post_init__(self) -> None:
        # Every series exists from the start (at 0), so rules and dashboards never see it missing.
        for reason in ("invalid", "given_up"):
            self.rejected.labels(reason=reason)
        for outcome in ("stored", "duplicate", "given_up", "completed_before"):
            self.batches.labels(outcome=outcome)
        for task in (INGEST_TASK, AVERAGES_TASK):
            self.retries.labels(task=task)
            self.failures.labels(task=task)
        for w in WINDOWS_S:
            self.averages_to.labels(window_seconds=str(w))


@dataclass
class _Node:
    """This worker node's metrics state (main process and, after fork, each pool process)."""

    directory: Path | None = None
    server: Any = None
    metrics: _Metrics | None = None
    prefix: str = ""
    redis_url: str = ""
    client: redis.Redis | None = None
    client_pid: int = 0
    started_ns: dict[str, int] = field(default_factory=dict)  # task id -> its batch's first received_ns


_node = _Node()


def _on_worker_init(**_: Any) -> None:
    """The node's main process, before the pool forks: a clean directory, multiprocess values, /metrics."""
    s = get_settings()
    if not s.worker_metrics_port:
        return
    # A new directory per node (never a previous node's files, which would be summed with ours), removed at its
    # shutdown; prometheus_client's pool processes find it in the environment they inherit.
    directory = Path(tempfile.mkdtemp(prefix="bookfeed-worker-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    _node.directory = directory
    # prometheus_client picks its value class when first imported; the directory exists only now, so switch the
    # class before any of our metrics is created (values are created per process on first use after a fork).
    setattr(values, "ValueClass", values.MultiProcessValue())  # type: ignore[no-untyped-call]  # noqa: B010
    _node.metrics = _Metrics()
    _node.prefix, _node.redis_url = s.broker_key_prefix, s.require_redis_url()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DeadProcesses(directory))  # first: the files are read after it
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(_QueueCollector(_node.redis_url, _node.prefix, s.database_url))
    try:
        _node.server, _thread = start_http_server(s.worker_metrics_port, registry=registry)
    except OSError as exc:
        logger.warning(
            "cannot serve worker metrics on port %d: %s; the node runs without /metrics", s.worker_metrics_port, exc
        )
        return
    logger.info("worker metrics on http://0.0.0.0:%d/metrics (pool files in %s)", s.worker_metrics_port, directory)


def _on_worker_shutdown(**_: Any) -> None:
    if _node.server is not None:
        _node.server.shutdown()
        _node.server.server_close()
    if _node.directory is not None:
        shutil.rmtree(_node.directory, ignore_errors=True)


def _on_process_init(**_: Any) -> None:
    if _node.metrics is not None:
        _node.metrics.processes.set(1)


def _on_process_shutdown(**_: Any) -> None:
    if _node.directory is not None:
        mark_process_dead(os.getpid(), str(_node.directory))  # type: ignore[no-untyped-call]


def _redis() -> redis.Redis:
    if _node.client is None or _node.client_pid != os.getpid():  # never a client inherited across fork
        _node.client = redis.Redis.from_url(_node.redis_url, socket_timeout=2, socket_connect_timeout=2)
        _node.client_pid = os.getpid()
    return _node.client


def _first_received_ns(arg: Any) -> int | None:
    """The receive time of a batch's first frame: from the batch itself, or from the outbox for a reference."""
    ref = reference(arg)
    if ref is None:
        frames = arg.get("frames") if isinstance(arg, dict) else None
        first = frames[0] if isinstance(frames, list) and frames else None
        return first[0] if isinstance(first, list) and first and type(first[0]) is int else None
    try:
        (head,) = _redis().eval(_HEADS_LUA, 1, OutboxKeys(_node.prefix).payload, ref.batch_id)
    except (redis.RedisError, OSError, ValueError):
        return None  # a metric is not worth delaying the batch: this one goes unmeasured
    m = _FIRST_FRAME.search(head.decode("utf-8", "replace") if isinstance(head, bytes) else str(head))
    return int(m.group(1)) if m else None


def _on_task_prerun(sender: Any = None, task_id: str = "", args: Any = (), **_: Any) -> None:
    if _node.metrics is None or getattr(sender, "name", None) != INGEST_TASK or not args:
        return
    first = _first_received_ns(args[0])
    if first is not None:
        _node.started_ns[task_id] = first


def _on_task_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    m, name = _node.metrics, getattr(sender, "name", None)
    if m is None or not isinstance(result, dict):
        return
    if name == AVERAGES_TASK and "window_s" in result and "to_s" in result:
        m.averages_to.labels(window_seconds=str(result["window_s"])).set(float(result["to_s"]))
        return
    if name != INGEST_TASK:
        return
    first = _node.started_ns.pop(getattr(getattr(sender, "request", None), "id", "") or "", None)
    if result.get("completed_before"):
        m.batches.labels(outcome="completed_before").inc()
        return
    given_up = int(result.get("rejected_batch", 0) or 0)
    if "rejected_batch" in result:
        m.batches.labels(outcome="given_up").inc()
        m.give_ups.inc()
        m.rejected.labels(reason="given_up").inc(given_up)
        return
    m.batches.labels(outcome="duplicate" if result.get("duplicate") else "stored").inc()
    m.stored.inc(int(result.get("n_books", 0) or 0))
    m.rejected.labels(reason="invalid").inc(int(result.get("n_rejected", 0) or 0))
    m.store_seconds.observe(float(result.get("duration_ms", 0.0) or 0.0) / 1000)
    if first is not None and not result.get("duplicate"):
        m.receive_to_commit.observe(max(0.0, (time.time_ns() - first) / 1e9))


def _on_task_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    if _node.metrics is not None:
        _node.metrics.retries.labels(task=_task_name(sender, request)).inc()
        _node.started_ns.pop(getattr(request, "id", "") or "", None)


def _on_task_failure(sender: Any = None, task_id: str = "", **_: Any) -> None:
    if _node.metrics is not None:
        _node.metrics.failures.labels(task=str(getattr(sender, "name", "?"))).inc()
        _node.started_ns.pop(task_id, None)


def _task_name(sender: Any, request: Any) -> str:
    return str(getattr(sender, "name", None) or getattr(request, "task", None) or "?")


worker_init.connect(_on_worker_init, weak=False)
worker_shutdown.connect(_on_worker_shutdown, weak=False)
worker_process_init.connect(_on_process_init, weak=False)
worker_process_shutdown.connect(_on_process_shutdown, weak=False)
task_prerun.connect(_on_task_prerun, weak=False)
task_success.connect(_on_task_success, weak=False)
task_retry.connect(_on_task_retry, weak=False)
task_failure.connect(_on_task_failure, weak=False)
