"""Where a worker's time goes per batch, in one process: the task body's JSON decode, parse, metrics, COPY rows,
claim, COPY, commit, timed phase by phase with the storage functions the worker calls; the cost of the indexes
(the same COPY into a clone without them); then cProfile over `workers.ingest.ingest_batch` itself.

    python -m bench.profile_worker [--batches 60] [--batch-frames 1000] [--top 25] [--per-frame]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from collections import defaultdict
from typing import Any

import orjson
from sqlalchemy import create_engine, text

from bench._common import frames, services
from models.book import parse_frame
from models.messages import make_batch
from models.metrics import book_metrics
from models.tables import book_snapshots
from models.vocabulary import EXCHANGE
from workers import storage
from workers.envelope import parse_batch
from workers.ingest import ingest_batch

__all__ = ["main", "phases"]

_COLUMNS = ", ".join(c.name for c in book_snapshots.columns)


def _payloads(n_batches: int, size: int, base_ns: int, prefix: str) -> list[str]:
    data = frames(n_batches * size, seed=3)
    return [
        json.dumps(
            make_batch(
                batch_id=f"{prefix}{k}",
                frames=[(base_ns + (k * size + i) * 1000, f) for i, f in enumerate(data[k * size : (k + 1) * size])],
            )
        )
        for k in range(n_batches)
    ]


def phases(db_url: str, n_batches: int, size: int, *, per_frame: bool = False) -> dict[str, float]:
    """Microseconds per frame in each phase, averaged over `n_batches` batches of `size` frames: the worker's batch
    fast path (models.columnar), or with `per_frame` the per-frame path it falls back on."""
    engine = create_engine(db_url)
    spent: dict[str, float] = defaultdict(float)
    bodies = _payloads(n_batches, size, time.time_ns(), "phase-")
    ingest_batch(engine, orjson.loads(bodies[0]))  # the day's partition and the connection: not the steady state
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_noindex (LIKE book_snapshots INCLUDING DEFAULTS)"))
    last = [0.0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        spent[name] += now - last[0]
        last[0] = now

    for body in bodies[1:]:
        last[0] = time.perf_counter()
        payload = orjson.loads(body)
        lap("json decode of the task body")
        if per_frame:
            books = [parse_frame(raw, received_ns=ns) for ns, raw in payload["frames"]]
            lap("parse + validate")
            items = [(b, book_metrics(b)) for b in books]
            lap("metrics")
            rows: str | bytes = storage.to_rows(items, exchange=EXCHANGE)
            lap("COPY rows (to_rows)")
            n_books, ns = len(books), [b.received_ns for b in books]
        else:
            batch = parse_batch(payload)
            lap("parse + validate + metrics + encode (batch fast path)")
            assert batch.columns is not None and not batch.books
            rows = storage.columns_to_rows(batch.columns, exchange=EXCHANGE)
            lap("COPY rows (columns_to_rows)")
            n_books, ns = batch.n_books, batch.received_ns()
        with engine.connect() as conn:
            tx = conn.begin()
            t0 = time.perf_counter()
            storage.claim_batch(
                conn, batch_id=payload["batch_id"], n_books=n_books, n_rejected=0, min_ns=min(ns), max_ns=max(ns)
            )
            t1 = time.perf_counter()
            storage.copy_books(conn, rows)
            t2 = time.perf_counter()
            tx.commit()
            t3 = time.perf_counter()
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cur.copy_expert(f"COPY bench_noindex ({_COLUMNS}) FROM STDIN", io.StringIO(rows))
            conn.commit()
            t4 = time.perf_counter()
            cur.close()
        spent["claim (INSERT ingest_batches)"] += t1 - t0
        spent["COPY into book_snapshots"] += t2 - t1
        spent["commit"] += t3 - t2
        spent["(COPY + commit into a clone without indexes)"] += t4 - t3
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE bench_noindex"))
    engine.dispose()
    n = (len(bodies) - 1) * size
    return {k: 1e6 * v / n for k, v in spent.items()}


def profile(db_url: str, n_batches: int, size: int, top: int) -> str:
    """cProfile of json decode + ingest_batch over `n_batches` batches, the `top` functions by own time."""
    engine = create_engine(db_url)
    bodies = _payloads(n_batches, size, time.time_ns() + 10**12, "prof-")
    ingest_batch(engine, orjson.loads(bodies[0]))
    prof = cProfile.Profile()
    prof.enable()
    for body in bodies[1:]:
        ingest_batch(engine, orjson.loads(body))
    prof.disable()
    engine.dispose()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--batch-frames", type=int, default=1000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--per-frame", action="store_true", help="time the per-frame path instead of the fast path")
    args = p.parse_args(argv)
    with services() as (_, _, new_database):
        url = new_database()
        us = phases(url, args.batches, args.batch_frames, per_frame=args.per_frame)
        total = sum(v for k, v in us.items() if not k.startswith("("))
        print(f"per frame, batches of {args.batch_frames} (µs; {1e6 / total:,.0f} frames/s in one process):")
        for k, v in us.items():
            print(f"  {k:<48} {v:8.1f} µs  {100 * v / total:5.1f} %")
        print(profile(url, args.batches, args.batch_frames, args.top))
    return {"us_per_frame": us}


if __name__ == "__main__":
    main()
