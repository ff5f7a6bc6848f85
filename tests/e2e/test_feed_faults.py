"""The feed against the simulator's faults, through a real worker: dropped connections and stalled streams are
survived, every forwarded frame is stored once, and each interruption is recorded in feed_gaps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from feed.service import run_feed
from models.settings import Settings
from simulator import SimConfig, SimulatorThread
from tests.services import wait_for
from workers.audit import check_ledger, duplicated_books, read_ledger

pytestmark = pytest.mark.e2e


def _reasons(db: Engine) -> set[tuple[str, str]]:
    """(stream, reason without its details) of every gap stored so far; each is stored once it is over."""
    with db.connect() as conn:
        return {
            (stream, reason.split(":")[0])
            for stream, reason in conn.execute(text("SELECT stream, reason FROM feed_gaps"))
        }


def _started(engine: Engine, stream: str) -> bool:
    return bool(_reasons(engine) & {(stream, "feed started"), (stream, "feed restarted")})


def test_drops_and_stalls_become_gaps_and_lose_nothing(
    tmp_path: Path, redis_url: str, broker_prefix: str, worker: Path, clean_db: Engine
) -> None:
    ledger = tmp_path / "ledger.tsv"
    streams = ["btcusdt@depth20@100ms", "ethusdt@depth10@100ms"]
    with SimulatorThread(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), seed=3)) as sim:
        settings = Settings(
            url=sim.url(streams),
            redis_url=redis_url,
            broker_key_prefix=broker_prefix,
            stall_timeout_s=1.5,
            ledger_path=str(ledger),
        )
        stop = threading.Event()
        feed = threading.Thread(target=run_feed, args=(settings,), kwargs={"stop": stop, "install_signals": False})
        feed.start()
        try:
            # The first gap of each stream: "feed started", or "feed restarted" when an earlier test's feed left
            # its last-seen time under the same broker prefix.
            wait_for(lambda: all(_started(clean_db, s) for s in streams), what="frames of both")
            assert sim.drop_all() == 1  # the socket dies without a close frame
            wait_for(lambda: _reasons(clean_db) >= {(s, "reconnected") for s in streams}, what="both back")
            sim.stall(3.0, stream="ethusdt@depth10@100ms")  # socket open, one stream silent
            wait_for(lambda: ("ethusdt@depth10@100ms", "stalled") in _reasons(clean_db), what="the stall over")
        finally:
            stop.set()
            feed.join(30)
    frames = read_ledger(ledger)

    wait_for(lambda: not check_ledger(clean_db, frames).missing)
    assert duplicated_books(clean_db) == 0
    with clean_db.connect() as conn:
        gaps = conn.execute(text("SELECT stream, reason, end_at - start_at FROM feed_gaps ORDER BY start_at")).all()
    reasons = {(stream, reason.split(":")[0]) for stream, reason, _ in gaps}
    assert ("btcusdt@depth20@100ms", "reconnected") in reasons
    assert ("ethusdt@depth10@100ms", "reconnected") in reasons
    assert ("ethusdt@depth10@100ms", "stalled") in reasons
    stall = next(d for s, r, d in gaps if r == "stalled")
    assert 2.5 <= stall.total_seconds() <= 6
