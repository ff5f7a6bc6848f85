"""The parts started by hand, as the README and Celery's documentation start them: `bookfeed migrate`, `bookfeed feed`,
`celery -A workers worker` (no -Q) and `celery -A workers beat` fill price_averages."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from simulator import SimConfig, SimulatorThread
from tests.services import Services, start_process, stop_process, wait_for

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


@pytest.fixture
def fresh_db(services: Services) -> Iterator[tuple[str, Engine]]:
    url = services.create_database(prefix="bookfeed_hand")
    engine = create_engine(url)
    yield url, engine
    engine.dispose()
    services.drop_database(url)


def test_parts_started_by_hand_fill_price_averages(
    fresh_db: tuple[str, Engine], services: Services, redis_url: str, tmp_path: Path
) -> None:
    db_url, engine = fresh_db
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        BOOKFEED_BROKER_KEY_PREFIX=f"bookfeed-hand-{uuid.uuid4().hex[:8]}:",
        BOOKFEED_LOG_FORMAT="text",
        BOOKFEED_AVERAGES_GRACE_S="1",  # a window counts as closed 1 s after its end: the first run finds one
    )
    # The feed needs no database: it starts while `bookfeed migrate` runs.
    migrate = subprocess.Popen(
        [str(BIN / "bookfeed"), "migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as stop_process expects
    )
    procs: dict[str, subprocess.Popen[bytes]] = {"migrate": migrate}
    with SimulatorThread(SimConfig(symbols=("BTCUSDT",), seed=3, rate=20.0)) as sim:
        try:
            # Beat runs the averages 6 s past each 30 s boundary (workers.schedules): the feed first, so that books
            # fill a window, then beat, then the worker; the test waits for a closed window's row.
            feed = [str(BIN / "bookfeed"), "feed", "--url", sim.url(["btcusdt@depth20"])]
            procs["feed"] = start_process(feed, env, tmp_path / "feed.log", ready=b"): live", what="feed")
            migrated, _ = migrate.communicate(timeout=120)
            assert migrate.returncode == 0, migrated.decode(errors="replace")
            beat = [str(BIN / "celery"), "-A", "workers", "beat", "--schedule", str(tmp_path / "schedule")]
            procs["beat"] = start_process(beat, env, tmp_path / "beat.log", ready=b"watching averages", what="beat")
            worker = [str(BIN / "celery"), "-A", "workers", "worker", "--concurrency", "1"]
            worker += ["--without-gossip", "--without-mingle", "-n", f"hand-{uuid.uuid4().hex[:6]}@%h"]
            procs["worker"] = start_process(worker, env, tmp_path / "worker.log", ready=b"ready.", what="worker")

            def averaged() -> bool:
                with engine.connect() as conn:
                    sql = "SELECT count(*) FROM price_averages WHERE window_seconds = 30 AND samples > 0"
                    return int(conn.execute(text(sql)).scalar_one()) > 0

            wait_for(averaged, 150, "a 30 s average in price_averages")
        finally:
            for name in ("beat", "worker", "feed", "migrate"):
                if name in procs:
                    stop_process(procs[name])
    assert "averages stale" not in (tmp_path / "beat.log").read_text()
