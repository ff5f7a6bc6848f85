"""Rotation at scale's smallest: the simulator ends every connection after 8 s (serverShutdown 3 s before), the real
feed (run_feed, two connections at a bare endpoint) replaces each before it goes, through Redis and a real worker
into PostgreSQL until each connection has been rotated three times and over 200 books of each symbol are stored
(over 20 s): every book the simulator made for the subscribed streams while the feed ran is stored
exactly once, and feed_gaps holds no gap for the rotations."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from feed.service import run_feed
from models.settings import Settings
from simulator import ServerConfig, SimConfig, SimulatorThread, update_ids
from tests.services import wait_for
from workers.audit import check_ledger, duplicated_books, read_ledger

pytestmark = pytest.mark.e2e

SYMBOLS = ("BTCUSDT", "ETHUSDT")
SEED = 11
ROTATED = 2 + 2 * 3  # connections served: two, each rotated at least three times
STORED = 200  # books of each symbol: ten a second for over 20 s


def _count(db: Engine, symbol: str) -> int:
    with db.connect() as conn:
        q = text("SELECT count(*) FROM book_snapshots WHERE symbol = :s")
        return int(conn.execute(q, {"s": symbol}).scalar_one())


def _stored_ids(db: Engine, symbol: str) -> list[int]:
    with db.connect() as conn:
        q = text("SELECT last_update_id FROM book_snapshots WHERE symbol = :s ORDER BY last_update_id")
        return [int(i) for i in conn.execute(q, {"s": symbol}).scalars()]


def test_rotations_store_every_frame_once_and_record_no_gap(
    tmp_path: Path, redis_url: str, broker_prefix: str, worker: Path, clean_db: Engine
) -> None:
    ledger = tmp_path / "ledger.tsv"
    server = ServerConfig(max_lifetime_s=8.0, shutdown_notice_s=3.0)
    with SimulatorThread(SimConfig(symbols=SYMBOLS, seed=SEED, server=server)) as sim:
        settings = Settings(
            url=f"ws://127.0.0.1:{sim.port}",
            symbols=SYMBOLS,
            speed="100ms",
            streams_per_connection=1,
            redis_url=redis_url,
            broker_key_prefix=broker_prefix,
            ledger_path=str(ledger),
        )
        stop = threading.Event()
        feed = threading.Thread(target=run_feed, args=(settings,), kwargs={"stop": stop, "install_signals": False})
        feed.start()

        def rotated_and_stored() -> bool:
            return sim.stats()["connections_total"] >= ROTATED and all(_count(clean_db, s) > STORED for s in SYMBOLS)

        try:
            wait_for(rotated_and_stored, 90, f"{ROTATED} connections served and over {STORED} books of each stored")
        finally:
            stop.set()
            feed.join(30)
        served = sim.stats()
    assert served["connections_total"] >= ROTATED
    assert not any(served["violations"].values())
    frames = read_ledger(ledger)
    wait_for(lambda: not check_ledger(clean_db, frames).missing, 60, "every forwarded frame stored")
    assert duplicated_books(clean_db) == 0

    for symbol in SYMBOLS:
        stored = _stored_ids(clean_db, symbol)
        assert len(stored) > STORED
        # None missing in between, none twice.
        assert stored == update_ids(symbol, seed=SEED, first=stored[0], last=stored[-1])
    with clean_db.connect() as conn:
        reasons = set(conn.execute(text("SELECT reason FROM feed_gaps")).scalars())
    assert reasons <= {"feed started", "feed restarted", "feed stopped"}
