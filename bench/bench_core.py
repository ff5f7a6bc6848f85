"""Per-frame costs in one process: parse + metrics and COPY row building frame by frame, the same through the
worker's batch fast path (models.columnar, batches of 1,000), and storing batches of 1,000 with
`workers.ingest.ingest_batch` (parse + claim + COPY + commit), plus the bytes each stored snapshot takes."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import create_engine, text

from bench._common import frames, services
from models.book import parse_frame
from models.messages import make_batch
from models.metrics import book_metrics
from models.vocabulary import EXCHANGE
from workers import storage
from workers.envelope import parse_batch
from workers.ingest import ingest_batch


def run(n: int = 30_000) -> dict[str, Any]:
    data = frames(n)
    t0 = time.perf_counter()
    parsed = [(b, book_metrics(b)) for b in (parse_frame(f, received_ns=i) for i, f in enumerate(data))]
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    storage.to_rows(parsed, exchange=EXCHANGE)
    t_rows = time.perf_counter() - t0
    payloads = [
        make_batch(batch_id=f"f{k}", frames=[(k * 1000 + i, f) for i, f in enumerate(data[k * 1000 : (k + 1) * 1000])])
        for k in range(n // 1000)
    ]
    t0 = time.perf_counter()
    for payload in payloads:
        batch = parse_batch(payload)
        assert batch.columns is not None
        storage.columns_to_rows(batch.columns, exchange=EXCHANGE)
    t_fast = time.perf_counter() - t0
    out: dict[str, Any] = {
        "parse+metrics frames/s (per frame)": n / t_parse,
        "to_rows frames/s (per frame)": n / t_rows,
        "parse+metrics+rows frames/s (batch fast path)": len(payloads) * 1000 / t_fast,
    }
    with services() as (_, _, new_database):
        url = new_database()
        engine = create_engine(url)
        base = time.time_ns()
        batches = [
            make_batch(
                batch_id=f"b{k}",
                frames=[(base + (k * 1000 + i) * 1000, f) for i, f in enumerate(data[k * 1000 : (k + 1) * 1000])],
            )
            for k in range(n // 1000)
        ]
        ingest_batch(engine, batches[0])  # partition creation and connection set-up are not the steady state
        t0 = time.perf_counter()
        for b in batches[1:]:
            ingest_batch(engine, b)
        t_store = time.perf_counter() - t0
        out["ingest_batch frames/s (1 process)"] = (len(batches) - 1) * 1000 / t_store
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE book_snapshots"))
            size, heap, rows = conn.execute(
                text(
                    "SELECT sum(pg_total_relation_size(inhrelid)), sum(pg_relation_size(inhrelid)), "
                    "(SELECT count(*) FROM book_snapshots) FROM pg_inherits "
                    "WHERE inhparent = 'book_snapshots'::regclass"
                )
            ).one()
        out["bytes/snapshot (table+indexes+toast)"] = int(size) / int(rows)
        out["bytes/snapshot (heap only)"] = int(heap) / int(rows)
        out["raw JSON bytes/frame"] = sum(len(f) for f in data) / n
        engine.dispose()
    return out


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k:<40} {v:>12,.0f}")
