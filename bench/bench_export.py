"""Data out: `order_books` read through iter_books, `export_books` in each format and layout, and archiving one day
(write + verify), on synthetic depth20 books of three symbols stored two days ago; books/s, output bytes per book and
the process's peak RSS after each step (constant memory: it must not grow with the number of books).

    python -m bench.bench_export [N_BOOKS]   # default 60,000
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from api.books import iter_books
from api.export import ExportFormat, ExportLayout, export_books
from bench._common import frames, services
from models.messages import make_batch
from workers.archive import Archive, archive_day
from workers.ingest import ingest_batch

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n: int = 60_000) -> dict[str, Any]:
    day = (datetime.now(UTC) - timedelta(days=2)).date()
    t0_ns = int(datetime(day.year, day.month, day.day, 1, tzinfo=UTC).timestamp()) * 10**9
    start, end = datetime(day.year, day.month, day.day, tzinfo=UTC), datetime.now(UTC)
    out: dict[str, Any] = {}
    with services() as (_, _, new_database), tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(new_database(), poolclass=NullPool)
        data = frames(n)
        for k in range(0, n, 1000):
            batch = [(t0_ns + (k + i) * 10**6, f) for i, f in enumerate(data[k : k + 1000])]
            ingest_batch(engine, make_batch(batch_id=f"x{k}", frames=batch))
        del data
        out["peak RSS after storing (MiB)"] = _rss_mib()
        t = time.perf_counter()
        count = sum(1 for s in SYMBOLS for _ in iter_books(engine, symbol=s, start=start, end=end))
        out["iter_books books/s"] = count / (time.perf_counter() - t)
        runs: tuple[tuple[ExportFormat, ExportLayout], ...] = (
            ("parquet", "native"),
            ("csv", "native"),
            ("csv", "tardis"),
            ("parquet", "tardis"),
        )
        for fmt, layout in runs:
            path = Path(tmp) / f"out.{layout}.{fmt}"
            t = time.perf_counter()
            rows = export_books(engine, symbols=SYMBOLS, start=start, end=end, fmt=fmt, layout=layout, out=path)
            out[f"export {fmt}/{layout} books/s"] = rows / (time.perf_counter() - t)
            out[f"export {fmt}/{layout} bytes/book"] = path.stat().st_size / rows
            out[f"peak RSS after export {fmt}/{layout} (MiB)"] = _rss_mib()
        t = time.perf_counter()
        manifest = archive_day(engine, Archive(str(Path(tmp) / "archive")), day)
        out["archive (write + verify) books/s"] = manifest.total_rows / (time.perf_counter() - t)
        out["peak RSS after archive (MiB)"] = _rss_mib()
        engine.dispose()
    return out


if __name__ == "__main__":
    for k, v in run(int(sys.argv[1]) if len(sys.argv) > 1 else 60_000).items():
        print(f"{k:<44} {v:>12,.1f}")
