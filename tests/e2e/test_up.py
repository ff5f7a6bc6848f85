"""`bookfeed up` end to end against a Binance-compatible server (the simulator), as in the README.

The two runs overlap: the `--symbols all` run (module fixture) goes on while the first test's run does, and the
first run is stopped with Ctrl-C (SIGINT) as soon as it has crossed the window boundaries its assertions need."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError

from simulator import FaultConfig, SimConfig, SimulatorThread
from stack.harness import free_port, up_command
from tests.e2e._checks import assert_metrics_exact
from tests.services import Services, wait_for
from workers.audit import averages_mismatches, check_ledger, duplicated_books, read_ledger

pytestmark = pytest.mark.e2e

UP_REDIS_DB = 14
RUN_TIMEOUT_S = 305  # a run, from its start to its exit (65 s runs had 65 + 240 s)
BOOKS_BEFORE_BOUNDARY_S = 2.0  # books of each symbol for at least this long before the first boundary counted


def _up_env(db_url: str, redis_url: str, prefix: str, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        BOOKFEED_BROKER_KEY_PREFIX=prefix,
        BOOKFEED_DATA_DIR=str(data),
        # Ports of its own: two runs at once would both find the default ports free, then one could not bind them.
        BOOKFEED_METRICS_PORT=str(free_port()),
        BOOKFEED_WORKER_METRICS_PORT=str(free_port()),
        **extra,
    )
    return env


def _start_up(args: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    """`bookfeed up args` with its stdout in `out` and its stderr in `out` + ".err"."""
    with out.open("wb") as stdout, out.with_suffix(".err").open("wb") as stderr:
        return subprocess.Popen(up_command(*args), env=env, stdout=stdout, stderr=stderr)


def _finish(proc: subprocess.Popen[bytes], out: Path, *, timeout: float) -> tuple[int, str, str]:
    """Wait for `proc` (SIGKILL after `timeout` seconds); its exit code, stdout and stderr."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return code, out.read_text(), out.with_suffix(".err").read_text()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """A run a failed test leaves behind: Ctrl-C, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def fresh_db(services: Services) -> Iterator[tuple[str, Engine]]:
    url = services.create_database(prefix="bookfeed_up")
    engine = create_engine(url)
    yield url, engine
    engine.dispose()
    services.drop_database(url)


ALL_SYMBOLS_RUN_S = 40


@dataclass
class AllSymbolsRun:
    proc: subprocess.Popen[bytes]
    out: Path
    engine: Engine
    listed: dict[str, str]  # symbol -> status, as exchangeInfo lists them


@pytest.fixture(scope="module")
def all_symbols_run(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AllSymbolsRun]:
    """`up --symbols all --duration 40` against the simulator's exchangeInfo, started once for the module, so that
    it runs while the first test's run does."""
    tmp = tmp_path_factory.mktemp("up_all")
    db_url = services.create_database(prefix="bookfeed_up_all")
    engine = create_engine(db_url)
    try:
        with SimulatorThread(SimConfig(random_symbols=120, seed=5)) as sim:
            with urllib.request.urlopen(sim.http_url("/api/v3/exchangeInfo"), timeout=10) as r:
                listed = {e["symbol"]: e["status"] for e in json.load(r)["symbols"]}
            prefix = f"bookfeed-up-all-{uuid.uuid4().hex[:8]}:"
            env = _up_env(
                db_url,
                f"{services.redis_base}/{UP_REDIS_DB}",
                prefix,
                tmp / "data",
                BOOKFEED_STREAMS_PER_CONNECTION="50",
            )
            args = ["--url", f"ws://{sim.host}:{sim.port}", "--rest-url", sim.http_url(), "--symbols", "all"]
            args += ["--duration", str(ALL_SYMBOLS_RUN_S), "--interval", "5", "--flower-port", str(free_port())]
            proc = _start_up(args, env, tmp / "up.out")
            try:
                yield AllSymbolsRun(proc, tmp / "up.out", engine, listed)
            finally:
                _stop(proc)  # stopped already, unless its test did not run or failed
    finally:
        engine.dispose()
        services.drop_database(db_url)


def _first_books_s(engine: Engine, symbols: tuple[str, ...]) -> float | None:
    """The latest of the symbols' first stored books' received_at (epoch s), or None while a symbol has none."""
    sql = "SELECT symbol, extract(epoch FROM min(received_at)) FROM order_books GROUP BY symbol"
    try:
        with engine.connect() as conn:
            firsts = dict(conn.execute(text(sql)).all())
    except ProgrammingError:  # `up` has not migrated the fresh database yet
        return None
    if set(firsts) != set(symbols):
        return None
    return max(float(firsts[s]) for s in symbols)


def test_up_stores_every_frame_once_with_exact_metrics_and_averages(
    fresh_db: tuple[str, Engine], services: Services, tmp_path: Path, all_symbols_run: AllSymbolsRun
) -> None:
    """The run crosses two 30 s boundaries (so one 60 s boundary) with books before the first, then Ctrl-C stops it:
    every closed window is computed."""
    db_url, engine = fresh_db
    prefix = f"bookfeed-up-{uuid.uuid4().hex[:8]}:"
    ledger = tmp_path / "ledger.tsv"
    faults = FaultConfig(malformed_fraction=0.02, crossed_fraction=0.01, one_sided_fraction=0.01)
    symbols = ("BTCUSDT", "ETHUSDT")
    with SimulatorThread(SimConfig(symbols=symbols, seed=11, rate=60.0, faults=faults)) as sim:
        url = sim.url(["btcusdt@depth20", "ethusdt@depth10"])
        env = _up_env(
            db_url, f"{services.redis_base}/{UP_REDIS_DB}", prefix, tmp_path / "data", BOOKFEED_LEDGER_PATH=str(ledger)
        )
        args = ["--url", url, "--workers", "2", "--interval", "5", "--flower-port", str(free_port())]
        proc = _start_up(args, env, tmp_path / "up.out")
        try:
            first: list[float] = []

            def books_of_both() -> bool:
                assert proc.poll() is None, (tmp_path / "up.out").read_text()
                s = _first_books_s(engine, symbols)
                first[:] = [] if s is None else [s]
                return s is not None

            wait_for(books_of_both, 120, "books of both symbols stored")
            boundary = (first[0] + BOOKS_BEFORE_BOUNDARY_S) // 30 * 30 + 30  # the first 30 s boundary counted
            # The second one, plus a second: then Ctrl-C. The windows ending there are closed when `up` stops.
            time.sleep(max(0.0, boundary + 30 + 1 - time.time()))
            stopped_at = time.time()
            proc.send_signal(signal.SIGINT)
            code, out, err = _finish(proc, tmp_path / "up.out", timeout=RUN_TIMEOUT_S)
        finally:
            _stop(proc)
        sent = sum(int(v) for v in sim.stats()["frames"].values())
    assert code == 0, out + err
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
    # `up` stops its feed no earlier than the Ctrl-C, then computes every window closed by then.
    assert averages_mismatches(engine, closed_before_s=stopped_at) == []


def test_up_with_every_symbol_stores_each_trading_symbol_and_no_other(all_symbols_run: AllSymbolsRun) -> None:
    """`--symbols all` against the simulator's exchangeInfo, over several connections: books of every TRADING symbol
    and none of the listed symbols that do not trade; the live view shows the connections and counts the symbols it
    does not list. The run stops by itself after its --duration."""
    code, out, err = _finish(all_symbols_run.proc, all_symbols_run.out, timeout=RUN_TIMEOUT_S)
    assert code == 0, out + err
    listed = all_symbols_run.listed
    trading = {s for s, status in listed.items() if status == "TRADING"}
    assert len(trading) < len(listed)  # the simulator lists a few symbols that do not trade
    with all_symbols_run.engine.connect() as conn:
        stored = set(conn.execute(text("SELECT DISTINCT symbol FROM order_books")).scalars())
    assert stored == trading
    assert f"streams {len(trading)} subscribed" in out
    assert f"connections {-(-len(trading) // 50)} live" in out  # 50 streams per connection
    assert f"… {len(trading) - 20} more symbols" in out
    assert f"symbols with books: {len(trading)}" in out
