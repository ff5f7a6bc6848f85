"""Drives the naive design (bench.naive_tasks): fills its queue with one task per frame, then starts a real worker
with `concurrency` processes and measures the rows it inserts per second while the queue is not empty."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import redis

from bench._common import frames
from bench.copy_limit import dsn
from bench.report import rate_between
from models.tables import book_snapshots
from stack.harness import ROOT, Harness, log_line

__all__ = ["run_naive"]

_NAIVE_WORKER = (
    sys.executable,
    "-m",
    "celery",
    "-A",
    "bench.naive_tasks",
    "worker",
    "--without-gossip",
    "--without-mingle",
)


def _count(db_url: str, table: str) -> int:
    conn = psycopg2.connect(dsn(db_url))
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def _execute(db_url: str, sql: str) -> None:
    conn = psycopg2.connect(dsn(db_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def run_naive(
    *, db_url: str, redis_url: str, prefix: str, concurrency: int, tasks: int, duration_s: float, logs: Path
) -> dict[str, Any]:
    """Rows/s inserted by `concurrency` worker processes, one task and one INSERT per frame."""
    os.environ["BENCH_NAIVE_BROKER"] = redis_url  # read by bench.naive_tasks at import, here and in the worker
    os.environ["BENCH_NAIVE_PREFIX"] = prefix
    from bench.naive_tasks import NAIVE_QUEUE, NAIVE_TABLE, NAIVE_TASK, app

    _execute(db_url, f"DROP TABLE IF EXISTS {NAIVE_TABLE}")
    _execute(db_url, f"CREATE TABLE {NAIVE_TABLE} (LIKE {book_snapshots.name} INCLUDING DEFAULTS INCLUDING INDEXES)")
    data = frames(tasks, seed=7)
    base = time.time_ns()
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i, raw in enumerate(data):
            app.send_task(NAIVE_TASK, args=(base + i * 1000, raw), queue=NAIVE_QUEUE, producer=producer)
    publish_s = time.perf_counter() - t0
    env = {
        **os.environ,
        "BENCH_NAIVE_DATABASE": db_url,
        # Importing workers.storage loads the workers package, whose Celery config asks for these.
        "REDIS_URL": redis_url,
        "DATABASE_URL": db_url,
        "PYTHONUNBUFFERED": "1",
    }
    harness = Harness(logs, env, cwd=ROOT)
    client = redis.Redis.from_url(redis_url)
    samples: list[tuple[float, float]] = []
    try:
        harness.start(
            "naive-worker",
            [*_NAIVE_WORKER, "-Q", NAIVE_QUEUE, "-c", str(concurrency), "-n", f"naive-{os.getpid()}@%h"],
            ready=log_line("ready."),
            timeout=120,
        )
        start = time.monotonic()
        while time.monotonic() - start < duration_s:
            problem = harness.exited()
            if problem:
                raise RuntimeError(f"naive worker: {problem}")
            samples.append((time.monotonic() - start, float(_count(db_url, NAIVE_TABLE))))
            if client.llen(prefix + NAIVE_QUEUE) == 0:
                break
            time.sleep(1.0)
    finally:
        harness.stop_all()
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()
        _execute(db_url, f"DROP TABLE IF EXISTS {NAIVE_TABLE}")
    # The first seconds include the pool's start and first connections: measure from the second sample on.
    rate = rate_between(samples[1:], 0.0, duration_s)
    return {
        "rows_per_s": rate,
        "concurrency": concurrency,
        "tasks_queued": tasks,
        "rows_inserted": int(samples[-1][1]) if samples else 0,
        "publish_tasks_per_s (one process)": tasks / publish_s if publish_s else 0.0,
        "samples": samples,
    }
