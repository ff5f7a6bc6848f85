"""The bare COPY limit: rows/s one process COPYs into a scratch table of book_snapshots' shape (same columns and
indexes, not partitioned), from rows pre-built as COPY text, one transaction per chunk. The rows are the ones the
whole-market run just stored, so their shape is the real one. Commit fsyncs and checkpoint I/O (WAL left by the run
before) make one timing swing widely, so the figure is the median of rounds each started right after a CHECKPOINT,
a discarded warm-up round first; the capacity phase's drain (bench.whole_market) starts after a CHECKPOINT too."""

from __future__ import annotations

import io
import time
from typing import Any

import psycopg2
import psycopg2.errors

from bench.report import spread
from models.tables import book_snapshots

__all__ = ["SCRATCH", "checkpoint", "copy_limit", "dsn", "stored_rows"]

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


def checkpoint(db_url: str) -> bool:
    """Run a CHECKPOINT (dirty pages flushed, WAL recycled), so what is timed next starts from the same state; False
    when the role may not (neither superuser nor pg_checkpoint), after which nothing else has changed."""
    conn = psycopg2.connect(dsn(db_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
        return True
    except psycopg2.errors.InsufficientPrivilege:
        return False
    finally:
        conn.close()


def _round(conn: Any, chunks: list[bytes], duration_s: float) -> tuple[int, float]:
    """COPY `chunks` into the (empty) scratch table, one commit each, until `duration_s` of COPY time; (rows, busy
    seconds). The table is emptied, off the clock, whenever the chunks run out."""
    copied, busy = 0, 0.0
    sql = f"COPY {SCRATCH} ({_COLUMNS}) FROM STDIN"
    with conn.cursor() as cur:
        while busy < duration_s:
            for text in chunks:
                t0 = time.perf_counter()
                cur.copy_expert(sql, io.BytesIO(text), size=len(text))
                conn.commit()
                busy += time.perf_counter() - t0
                copied += text.count(b"\n")
                if busy >= duration_s:
                    break
            else:
                cur.execute(f"TRUNCATE {SCRATCH}")
                conn.commit()
    return copied, busy


def copy_limit(
    db_url: str, rows: list[str], *, chunk: int, duration_s: float, rounds: int = 3, warmup_s: float = 1.0
) -> dict[str, Any]:
    """COPY `rows` in chunks of `chunk`, one commit each: a CHECKPOINT first, a discarded warm-up round of
    `warmup_s` seconds of COPY time, then `rounds` rounds sharing `duration_s`, each into the emptied scratch table
    right after a CHECKPOINT (so each starts with no dirty pages nor WAL from what ran before). Returns the median of
    the rounds' rows/s as `rows_per_s`, each round's figure, their min and max, the warm-up's, whether the
    CHECKPOINTs ran (False: the role may not; the rounds ran without them) and the settings."""
    rounds = max(1, rounds)
    done = checkpoint(db_url)
    result: dict[str, Any] = {"chunk_rows": chunk, "checkpoints": done, "warmup_s": warmup_s}
    if not rows:
        return {**result, "rows_per_s": 0.0, "rows_per_s_min": 0.0, "rows_per_s_max": 0.0, "rounds_rows_per_s": []}
    # Pre-built and encoded, read in one piece, as workers.storage.copy_books reads its rows.
    chunks = ["".join(rows[i : i + chunk]).encode("utf-8") for i in range(0, len(rows), chunk)]
    conn = psycopg2.connect(dsn(db_url))
    per_round: list[tuple[int, float]] = []
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
            cur.execute(f"CREATE TABLE {SCRATCH} (LIKE {book_snapshots.name} INCLUDING DEFAULTS INCLUDING INDEXES)")
            conn.commit()
        warm_rows, warm_s = _round(conn, chunks, warmup_s) if warmup_s > 0 else (0, 0.0)
        for _ in range(rounds):
            with conn.cursor() as cur:
                cur.execute(f"TRUNCATE {SCRATCH}")
                conn.commit()
            if done:
                checkpoint(db_url)
            per_round.append(_round(conn, chunks, duration_s / rounds))
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE {SCRATCH}")
            conn.commit()
    finally:
        conn.close()
    rates = [n / s if s else 0.0 for n, s in per_round]
    mid = spread(rates)
    return {
        **result,
        "rows_per_s": mid["median"],
        "rows_per_s_min": mid["min"],
        "rows_per_s_max": mid["max"],
        "rounds_rows_per_s": rates,
        "warmup_rows_per_s": warm_rows / warm_s if warm_s else 0.0,
        "rows": sum(n for n, _ in per_round),
        "seconds": sum(s for _, s in per_round),
    }
