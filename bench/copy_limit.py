"""The bare COPY limit: rows/s one process COPYs into a scratch table of book_snapshots' shape (same columns and
indexes, not partitioned), from rows pre-built as COPY text, one transaction per chunk. The rows are the ones the
whole-market run just stored, so their shape is the real one."""

from __future__ import annotations

import io
import time
from typing import Any

import psycopg2

from models.tables import book_snapshots

__all__ = ["SCRATCH", "copy_limit", "dsn", "stored_rows"]

SCRATCH = "bench_copy_scratch"
_COLUMNS = ", ".join(c.name for c in book_snapshots.columns)


def dsn(url: str) -> str:
    """A libpq URL from a SQLAlchemy one."""
    return url.replace("postgresql+psycopg2://", "postgresql://")


def stored_rows(db_url: str, limit: int) -> list[str]:
    """Up to `limit` stored books as COPY text lines (book_snapshots' column order)."""
    buf = io.StringIO()
    conn = psycopg2.connect(dsn(db_url))
    try:
        with conn.cursor() as cur:
            cur.copy_expert(
                f"COPY (SELECT {_COLUMNS} FROM {book_snapshots.name} ORDER BY received_at LIMIT {int(limit)}) "
                "TO STDOUT",
                buf,
            )
    finally:
        conn.close()
    return buf.getvalue().splitlines(keepends=True)


def copy_limit(db_url: str, rows: list[str], *, chunk: int, duration_s: float) -> dict[str, Any]:
    """COPY `rows` in chunks of `chunk`, one commit each, for about `duration_s` seconds of COPY time (the scratch
    table is emptied, off the clock, whenever the rows run out). Returns rows/s and the settings."""
    if not rows:
        return {"rows_per_s": 0.0, "chunk_rows": chunk, "rows": 0, "seconds": 0.0}
    chunks = ["".join(rows[i : i + chunk]) for i in range(0, len(rows), chunk)]
    conn = psycopg2.connect(dsn(db_url))
    copied, busy = 0, 0.0
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
            cur.execute(f"CREATE TABLE {SCRATCH} (LIKE {book_snapshots.name} INCLUDING DEFAULTS INCLUDING INDEXES)")
            conn.commit()
            sql = f"COPY {SCRATCH} ({_COLUMNS}) FROM STDIN"
            while busy < duration_s:
                for text in chunks:
                    t0 = time.perf_counter()
                    cur.copy_expert(sql, io.StringIO(text))
                    conn.commit()
                    busy += time.perf_counter() - t0
                    copied += text.count("\n")
                    if busy >= duration_s:
                        break
                cur.execute(f"TRUNCATE {SCRATCH}")
                conn.commit()
            cur.execute(f"DROP TABLE {SCRATCH}")
            conn.commit()
    finally:
        conn.close()
    return {"rows_per_s": copied / busy if busy else 0.0, "chunk_rows": chunk, "rows": copied, "seconds": busy}
