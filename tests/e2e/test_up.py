"""`bookfeed up` end to end against a Binance-compatible server (the simulator), as in the README."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from simulator import FaultConfig, SimConfig, SimulatorThread
from stack.harness import free_port, up_command
from tests.e2e._checks import assert_metrics_exact
from tests.services import Services
from workers.audit import averages_mismatches, check_ledger, duplicated_books, read_ledger

pytestmark = pytest.mark.e2e

DURATION_S = 65  # crosses at least one 60 s and two 30 s boundaries
UP_REDIS_DB = 14


@pytest.fixture
def fresh_db(services: Services) -> Iterator[tuple[str, Engine]]:
    url = services.create_database(prefix="bookfeed_up")
    engine = create_engine(url)
    yield url, engine
    engine.dispose()
    services.drop_database(url)


def test_up_stores_every_frame_once_with_exact_metrics_and_averages(
    fresh_db: tuple[str, Engine], services: Services, tmp_path: Path
) -> None:
    db_url, engine = fresh_db
    redis_url = f"{services.redis_base}/{UP_REDIS_DB}"
    prefix = f"bookfeed-up-{uuid.uuid4().hex[:8]}:"
    ledger = tmp_path / "ledger.tsv"
    faults = FaultConfig(malformed_fraction=0.02, crossed_fraction=0.01, one_sided_fraction=0.01)
    with SimulatorThread(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), seed=11, rate=60.0, faults=faults)) as sim:
        url = sim.url(["btcusdt@depth20", "ethusdt@depth10"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
        env.update(
            DATABASE_URL=db_url,
            REDIS_URL=redis_url,
            BOOKFEED_LEDGER_PATH=str(ledger),
            BOOKFEED_BROKER_KEY_PREFIX=prefix,
            BOOKFEED_DATA_DIR=str(tmp_path / "data"),
        )
        started_at = time.time()
        proc = subprocess.run(
            up_command(
                *("--url", url, "--duration", str(DURATION_S), "--workers", "2", "--interval", "5"),
                *("--flower-port", str(free_port())),
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=DURATION_S + 240,
        )
        sent = sum(int(v) for v in sim.stats()["frames"].values())
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # The live lines and the closing summary.
    assert "BTCUSDT" in out and "ETHUSDT" in out and "frames/s" in out and "queue" in out
    assert "Flower:" in out and "latest rows of price_averages" in out

    frames = read_ledger(ledger)
    assert 0.9 * sent <= len(frames) <= sent
    assert check_ledger(engine, frames).missing == []
    assert duplicated_books(engine) == 0
    with engine.connect() as conn:
        books = conn.execute(text("SELECT count(*) FROM order_books")).scalar_one()
        rejected = conn.execute(text("SELECT count(*) FROM rejected_messages")).scalar_one()
        depths = dict(conn.execute(text("SELECT symbol, max(depth) FROM order_books GROUP BY symbol")).all())
        crossed = conn.execute(text("SELECT count(*) FROM book_metrics WHERE crossed")).scalar_one()
        windows = dict(
            conn.execute(text("SELECT window_seconds, count(*) FROM price_averages GROUP BY window_seconds")).all()
        )
    assert books + rejected == len(frames)
    assert rejected > 0 and crossed > 0  # the injected faults arrived and were handled
    assert depths == {"BTCUSDT": 20, "ETHUSDT": 10}
    assert assert_metrics_exact(engine) == books
    assert windows.get(30, 0) >= 2 * 2 and windows.get(60, 0) >= 2
    # `up` stops its feed no earlier than DURATION_S after we started it, then computes every window closed by then.
    assert averages_mismatches(engine, closed_before_s=started_at + DURATION_S) == []


ALL_SYMBOLS_RUN_S = 40


def test_up_with_every_symbol_stores_each_trading_symbol_and_no_other(
    fresh_db: tuple[str, Engine], services: Services, tmp_path: Path
) -> None:
    """`--symbols all` against the simulator's exchangeInfo, over several connections: books of every TRADING symbol
    and none of the listed symbols that do not trade; the live view shows the connections and counts the symbols it
    does not list."""
    db_url, engine = fresh_db
    prefix = f"bookfeed-up-all-{uuid.uuid4().hex[:8]}:"
    with SimulatorThread(SimConfig(random_symbols=120, seed=5)) as sim:
        with urllib.request.urlopen(sim.http_url("/api/v3/exchangeInfo"), timeout=10) as r:
            listed = {e["symbol"]: e["status"] for e in json.load(r)["symbols"]}
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
        env.update(
            DATABASE_URL=db_url,
            REDIS_URL=f"{services.redis_base}/{UP_REDIS_DB}",
            BOOKFEED_BROKER_KEY_PREFIX=prefix,
            BOOKFEED_DATA_DIR=str(tmp_path / "data"),
            BOOKFEED_STREAMS_PER_CONNECTION="50",
        )
        proc = subprocess.run(
            up_command(
                *("--url", f"ws://{sim.host}:{sim.port}", "--rest-url", sim.http_url(), "--symbols", "all"),
                *("--duration", str(ALL_SYMBOLS_RUN_S), "--interval", "5", "--flower-port", str(free_port())),
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=ALL_SYMBOLS_RUN_S + 240,
        )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    trading = {s for s, status in listed.items() if status == "TRADING"}
    assert len(trading) < len(listed)  # the simulator lists a few symbols that do not trade
    with engine.connect() as conn:
        stored = set(conn.execute(text("SELECT DISTINCT symbol FROM order_books")).scalars())
    assert stored == trading
    assert f"streams {len(trading)} subscribed" in out
    assert f"connections {-(-len(trading) // 50)} live" in out  # 50 streams per connection
    assert f"… {len(trading) - 20} more symbols" in out
    assert f"symbols with books: {len(trading)}" in out
