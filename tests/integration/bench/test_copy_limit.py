"""bench.copy_limit against a real PostgreSQL: the rows a run stored, COPYed back in rounds each after a CHECKPOINT
(the server counts them), summarised by their median and range; the scratch table is gone afterwards."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg2
import pytest

from bench._common import frames, services
from bench.copy_limit import SCRATCH, copy_limit, dsn, stored_rows
from models.columnar import parse_columns
from workers import storage
from workers.db import make_engine

pytestmark = pytest.mark.integration

_NS = 1_764_500_000_000_000_000


def _checkpoints(url: str) -> int:
    """Checkpoints requested since the server started (pg_stat_checkpointer from PostgreSQL 17, bgwriter before)."""
    conn = psycopg2.connect(dsn(url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('pg_catalog.pg_stat_checkpointer') IS NOT NULL")
            newer = cur.fetchone() == (True,)
            cur.execute(
                "SELECT num_requested FROM pg_stat_checkpointer"
                if newer
                else "SELECT checkpoints_req FROM pg_stat_bgwriter"
            )
            (n,) = cur.fetchone() or (0,)
            return int(n)
    finally:
        conn.close()


def test_the_bare_copy_limit_rounds_each_follow_a_checkpoint() -> None:
    with services() as (_, _, new_database):
        url = new_database()
        cols, _ = parse_columns([(_NS + i * 1_000_000, f) for i, f in enumerate(frames(300, seed=4))])
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                storage.ensure_partitions(conn, {datetime.fromtimestamp(_NS / 1e9, UTC).date()})
                storage.copy_books(conn, storage.columns_to_rows(cols, exchange="binance"))
        finally:
            engine.dispose()
        rows = stored_rows(url, 1_000)
        assert len(rows) == 300
        before = _checkpoints(url)
        r = copy_limit(url, rows, chunk=50, duration_s=0.6, rounds=2, warmup_s=0.2)
        assert r["checkpoints"] is True
        assert _checkpoints(url) - before >= 3  # the first one, then one before each round
        assert len(r["rounds_rows_per_s"]) == 2 and r["rows"] >= 50
        assert 0 < r["rows_per_s_min"] <= r["rows_per_s"] <= r["rows_per_s_max"]
        pg = psycopg2.connect(dsn(url))
        try:
            with pg.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (SCRATCH,))
                assert cur.fetchone() == (None,)
        finally:
            pg.close()
