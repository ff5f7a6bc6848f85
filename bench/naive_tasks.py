"""The naive design, for comparison only: one Celery task per frame, one INSERT (its own transaction) per task,
with the delivery settings of the real workers (acks late, requeue on worker loss, one task reserved at a time).

Run by a real worker: `celery -A bench.naive_tasks worker -Q <NAIVE_QUEUE>` with BENCH_NAIVE_BROKER,
BENCH_NAIVE_PREFIX and BENCH_NAIVE_DATABASE in its environment (bench.naive starts it)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from sqlalchemy import Engine, create_engine

from models.book import parse_frame
from models.messages import transport_options
from models.metrics import book_metrics
from models.tables import book_snapshots
from models.vocabulary import EXCHANGE
from workers import storage

__all__ = ["NAIVE_QUEUE", "NAIVE_TABLE", "NAIVE_TASK", "app", "insert_frame"]

NAIVE_QUEUE = "bench_naive"
NAIVE_TASK = "bench.naive_insert"
NAIVE_TABLE = "bench_naive_scratch"  # same columns and indexes as book_snapshots, not partitioned

_COLUMNS = [c.name for c in book_snapshots.columns]
_INSERT = f"INSERT INTO {NAIVE_TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))})"
_engine: Engine | None = None

app = Celery("bench_naive", broker=os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/13"))
app.conf.update(
    broker_transport_options=transport_options(os.environ.get("BENCH_NAIVE_PREFIX", "")),
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=NAIVE_QUEUE,
    worker_hijack_root_logger=False,
)


def _row_values(raw: str, received_ns: int) -> tuple[Any, ...]:
    book = parse_frame(raw, received_ns=received_ns)
    line = storage.to_rows([(book, book_metrics(book))], exchange=EXCHANGE)
    return tuple(None if v == r"\N" else v for v in line.rstrip("\n").split("\t"))


def _insert_frame(received_ns: int, raw: str) -> None:
    """Parse, compute metrics and INSERT one frame in a transaction of its own."""
    global _engine
    if _engine is None:
        _engine = create_engine(os.environ["BENCH_NAIVE_DATABASE"], pool_size=1)
    with _engine.begin() as conn:
        conn.exec_driver_sql(_INSERT, _row_values(raw, received_ns))


insert_frame = app.task(name=NAIVE_TASK)(_insert_frame)
