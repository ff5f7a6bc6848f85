"""End to end through `bookfeed up`: the simulator at a fixed rate -> feed -> Redis -> 2 worker processes ->
PostgreSQL, on this machine. Reports frames/s received and stored, the backlog, and receive-to-stored latency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from bench._common import services
from models.vocabulary import stream_name
from stack.harness import free_port, log_line, simulate_command, start_process, up_command

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


def run_once(rate: float, duration_s: float, db_url: str, redis_url: str, workdir: Path) -> dict[str, Any]:
    port = free_port()
    prefix = f"bookfeed-bench-{uuid.uuid4().hex[:8]}:"  # this run's queues and stats, removed at the end
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
    env.update(
        DATABASE_URL=db_url, REDIS_URL=redis_url, BOOKFEED_DATA_DIR=str(workdir), BOOKFEED_BROKER_KEY_PREFIX=prefix
    )
    sim = start_process(
        simulate_command(port=port, symbols=SYMBOLS, rate=rate, seed=1),
        log=workdir / "simulator.log",
        env=env,
        name="simulator",
        ready=log_line("listening on"),
    )
    streams = "/".join(stream_name(s, 20, "100ms") for s in SYMBOLS)
    t0 = time.monotonic()
    try:
        up = subprocess.run(
            up_command(
                *("--url", f"ws://127.0.0.1:{port}/stream?streams={streams}", "--duration", str(duration_s)),
                *("--workers", "2", "--interval", "5", "--flower-port", str(free_port())),
            ),
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        sim.stop()
    wall = time.monotonic() - t0
    if up.returncode != 0:
        raise RuntimeError(f"bookfeed up failed: {up.stdout[-2000:]} {up.stderr[-2000:]}")
    engine = create_engine(db_url)
    with engine.connect() as conn:
        books = conn.execute(text("SELECT count(*) FROM book_snapshots")).scalar_one()
        first, last = conn.execute(
            text(
                "SELECT extract(epoch FROM min(received_at)), extract(epoch FROM max(received_at)) FROM book_snapshots"
            )
        ).one()
        s_first, s_last = conn.execute(
            text("SELECT extract(epoch FROM min(stored_at)), extract(epoch FROM max(stored_at)) FROM ingest_batches")
        ).one()
        lat = conn.execute(
            text(
                "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - "
                "min_received_at)), max(extract(epoch FROM stored_at - min_received_at)) FROM ingest_batches "
                "WHERE min_received_at IS NOT NULL"
            )
        ).one()
        dups = conn.execute(
            text("SELECT count(*) - count(DISTINCT (symbol, last_update_id)) FROM book_snapshots")
        ).scalar_one()
        conn.execute(
            text("TRUNCATE book_snapshots, ingest_batches, rejected_frames, price_average_windows, averages_progress")
        )
        conn.commit()
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)
    client.close()
    received_s = float(last) - float(first)
    return {
        "offered frames/s": rate,
        "received frames/s": books / received_s if received_s else 0.0,
        "stored frames/s": books / (float(s_last) - float(s_first)) if s_last != s_first else 0.0,
        "frames stored": books,
        "duplicates stored": dups,
        "latency p50 s": float(lat[0][0]),
        "latency p99 s": float(lat[0][1]),
        "latency max s": float(lat[1]),
        "wall s (incl. start, drain)": wall,
    }


def run(rates: tuple[float, ...] = (1000, 5000, 10000, 20000), duration_s: float = 30.0) -> list[dict[str, Any]]:
    out = []
    with services() as (_, redis_base, new_database):
        db_url = new_database()
        redis_url = f"{redis_base}/13"
        workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bookfeed-bench-up"
        for rate in rates:
            out.append(run_once(rate, duration_s, db_url, redis_url, workdir))
    return out


if __name__ == "__main__":
    rates = tuple(float(r) for r in sys.argv[1:]) or (1000, 5000, 10000, 20000)
    for row in run(rates):
        print("  ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
