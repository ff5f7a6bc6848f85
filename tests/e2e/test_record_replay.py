"""Record the simulator, replay the recording through feed -> Redis -> real worker -> PostgreSQL: the stored books
are exactly the recorded ones, and replaying again stores the same books."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from feed.service import run_feed
from models.book import parse_frame
from models.errors import InvalidBookError
from models.settings import load_settings
from simulator import FaultConfig, ReplayConfig, ReplayThread, SimConfig, SimulatorThread, read_recording
from stack.harness import bookfeed_command, pending_tasks, wait_until
from tests.conftest import empty_data_tables
from tests.services import wait_for

pytestmark = pytest.mark.e2e

STREAMS = ["btcusdt@depth20", "ethusdt@depth5@100ms"]
N_FRAMES = 400


def _stored(engine: Engine) -> tuple[set[tuple[object, ...]], set[str]]:
    with engine.connect() as conn:
        books = {
            tuple(tuple(v) if isinstance(v, list) else v for v in r)
            for r in conn.execute(
                text(
                    "SELECT symbol, depth, last_update_id, bid_prices::text[], bid_quantities::text[], "
                    "ask_prices::text[], "
                    "ask_quantities::text[] FROM order_books"
                )
            )
        }
        rejected = {r for (r,) in conn.execute(text("SELECT raw FROM rejected_messages"))}
    return books, rejected


def _replay_through_pipeline(recording: Path, redis_url: str, prefix: str, engine: Engine) -> None:
    empty_data_tables(engine)
    with ReplayThread(ReplayConfig(path=recording, fast=True)) as replay:
        stop = threading.Event()
        settings = load_settings(
            url=replay.url(STREAMS),
            redis_url=redis_url,
            broker_key_prefix=prefix,
            batch_max_frames=50,
            silence_timeout_s=300,
        )
        feed = threading.Thread(target=run_feed, args=(settings,), kwargs={"stop": stop, "install_signals": False})
        feed.start()
        try:
            wait_for(lambda: _accounted(engine) >= N_FRAMES, 60, f"{N_FRAMES} frames stored or rejected")
        finally:
            stop.set()
            feed.join(30)
    # Anything still in flight would show up as an extra row below: wait until the queues are empty.
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: pending_tasks(client, prefix) == 0, timeout=30, what="queues empty")
    finally:
        client.close()


def _accounted(engine: Engine) -> int:
    with engine.connect() as conn:
        sql = "SELECT (SELECT count(*) FROM order_books) + (SELECT count(*) FROM rejected_messages)"
        return int(conn.execute(text(sql)).scalar_one())


def test_recorded_frames_replay_into_identical_books(
    tmp_path: Path, redis_url: str, broker_prefix: str, worker: Path, clean_db: Engine
) -> None:
    path = tmp_path / "sim.jsonl.gz"
    faults = FaultConfig(malformed_fraction=0.03, crossed_fraction=0.02, one_sided_fraction=0.02)
    with SimulatorThread(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), seed=5, rate=400.0, faults=faults)) as sim:
        rec = subprocess.run(
            bookfeed_command("record", "--url", sim.url(STREAMS), "--out", str(path), "--max-frames", str(N_FRAMES)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert rec.returncode == 0, rec.stdout + rec.stderr
    recording = read_recording(path)
    assert len(recording.frames) == N_FRAMES

    expected_books: set[tuple[object, ...]] = set()
    expected_rejected: set[str] = set()
    for f in recording.frames:
        try:
            b = parse_frame(f.frame, received_ns=f.t_ns)
        except InvalidBookError:
            expected_rejected.add(f.frame)
            continue
        expected_books.add(
            (b.symbol, b.depth, b.last_update_id, b.bid_prices, b.bid_quantities, b.ask_prices, b.ask_quantities)
        )
    assert expected_rejected and len(expected_books) > N_FRAMES // 2

    runs = []
    for _ in range(2):
        _replay_through_pipeline(path, redis_url, broker_prefix, clean_db)
        books, rejected = _stored(clean_db)
        runs.append((books, rejected))
    assert runs[0][0] == expected_books
    assert not (expected_rejected - runs[0][1]), sorted(expected_rejected - runs[0][1])[:3]
    assert not (runs[0][1] - expected_rejected), sorted(runs[0][1] - expected_rejected)[:3]
    assert runs[1] == runs[0]
