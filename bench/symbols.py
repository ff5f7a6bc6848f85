"""Issue 9's Done-when on real runs: `python -m bench.symbols all|list600|shards|rotation [--keep]`.

Each scenario runs the real processes against `bookfeed simulate`, prints its figures and a verdict, and exits 1 on
failure. DATABASE_URL/REDIS_URL when set (a database made here, dropped after unless --keep; a key prefix of its own,
its keys deleted after, nothing flushed), embedded servers (stack.embedded) otherwise. Books are read through the
public views only (order_books, feed_gaps); the feed's figures come from its stats in Redis and psutil.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import redis
from sqlalchemy import create_engine, text

from feed.service import read_feed_stats
from feed.universe import fetch_exchange_info, parse_exchange_info, shard_of
from models.vocabulary import parse_stream_name
from simulator import update_ids
from stack.embedded import start_servers
from stack.harness import (
    Harness,
    bookfeed_command,
    drain,
    feed_command,
    free_port,
    log_line,
    up_command,
    wait_until,
    worker_command,
)

SIM_SYMBOLS = 1500
ROTATION_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
ROTATION_SEED = 11
STARTED_STOPPED = {"feed started", "feed stopped", "feed restarted"}
SAMPLE_S = 2.0


@dataclass
class Run:
    """One scenario's services, environment and processes."""

    db_url: str
    redis_url: str
    prefix: str
    work: Path
    harness: Harness
    redis: redis.Redis
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, what: str, ok: bool) -> None:
        self.checks.append((what, ok))
        print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = create_engine(self.db_url, pool_size=1)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).all())
        finally:
            engine.dispose()


@contextmanager
def _run(name: str, keep: bool) -> Iterator[Run]:
    work = Path(tempfile.mkdtemp(prefix=f"bookfeed-symbols-{name}-"))
    servers = start_servers(
        work / "servers", database_url=os.environ.get("DATABASE_URL"), redis_url=os.environ.get("REDIS_URL")
    )
    db_url = servers.create_database(prefix="bookfeed_symbols")
    redis_url = os.environ.get("REDIS_URL") or servers.redis_base + "/0"
    prefix = f"bookfeed-symbols-{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        BOOKFEED_BROKER_KEY_PREFIX=prefix,
        BOOKFEED_DATA_DIR=str(work / "data"),
        BOOKFEED_LOG_FORMAT="text",
        PYTHONUNBUFFERED="1",
    )
    client = redis.Redis.from_url(redis_url)
    run = Run(db_url, redis_url, prefix, work, Harness(work / "logs", env), client)
    print(f"{name}: logs in {work}", flush=True)
    try:
        yield run
    finally:
        run.harness.stop_all()
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()
        if keep:
            print(f"  database kept: {db_url}")
        else:
            servers.drop_database(db_url)
        servers.close()


# ---- the simulator -----------------------------------------------------------------------------------------------


def _simulator(run: Run, *args: str) -> int:
    port = free_port()
    run.harness.start(
        "simulator", bookfeed_command("simulate", "--port", str(port), *args), ready=log_line("listening")
    )
    return port


def _exchange_info(port: int) -> tuple[list[str], set[str]]:
    """(TRADING symbols in exchangeInfo's order, the others)."""
    infos = parse_exchange_info(fetch_exchange_info(f"http://127.0.0.1:{port}"))
    return [i.symbol for i in infos if i.status == "TRADING"], {i.symbol for i in infos if i.status != "TRADING"}


def _sim_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/control/stats", timeout=30) as response:
        doc: dict[str, Any] = json.loads(response.read())
    return doc


def _check_simulator(run: Run, port: int) -> dict[str, Any]:
    stats = _sim_stats(port)
    logged = run.harness.children["simulator"].output().count(b"limit violation")
    print(
        f"  simulator: connections_total={stats['connections_total']} frames_sent={stats['frames_total']:,} "
        f"frames_skipped={stats['frames_skipped']} violations={stats['violations']} (log lines: {logged})"
    )
    run.check("no limit violation in the simulator", not any(stats["violations"].values()) and logged == 0)
    return stats


# ---- the feed, sampled while it runs -----------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    feeds: dict[str, dict[str, Any]]  # feed_id -> its stats snapshot (per_stream left out)
    cpu: dict[int, float]  # pid -> user + system CPU seconds


class Sampler(threading.Thread):
    """Every SAMPLE_S seconds: each feed's stats in Redis and the CPU of the feed processes `pids()` names."""

    def __init__(self, run: Run, pids: Callable[[], list[int]]) -> None:
        super().__init__(daemon=True)
        self.run_, self.pids = run, pids
        self.samples: list[Sample] = []
        self.per_stream: dict[str, dict[str, int]] = {}  # feed_id -> its latest per-stream frame counts
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            feeds = {}
            for s in read_feed_stats(self.run_.redis, self.run_.prefix):
                self.per_stream[s["feed_id"]] = s.pop("per_stream")
                feeds[s["feed_id"]] = s
            cpu = {}
            for pid in self.pids():
                try:
                    times = psutil.Process(pid).cpu_times()
                    cpu[pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.samples.append(Sample(time.monotonic(), feeds, cpu))

    def report(self, expected_streams: int) -> tuple[int, float]:
        """Print connections, frames/s and CPU over the steady part (every stream subscribed, before the stop);
        returns (most live connections of one feed at once, summed across feeds, frames/s received)."""
        steady = [s for s in self.samples if s.feeds and sum(_subscribed(s)) >= expected_streams and s.cpu]
        live = max((sum(_live(f) for f in s.feeds.values()) for s in self.samples), default=0)
        conns = max((sum(len(f["connections"]) for f in s.feeds.values()) for s in self.samples), default=0)
        running = [s for s in self.samples if any(_live(f) for f in s.feeds.values())]
        states = Counter(c["state"] for s in running[-1:] for f in s.feeds.values() for c in f["connections"])
        print(
            f"  connections: at most {live} live at once ({conns} in the stats), states at the last sample with one "
            f"live {dict(states)}"
        )
        for f in self.samples[-1].feeds.values() if self.samples else ():
            print(
                f"  feed {f['feed_id']} at its end: frames {f['frames']:,}, duplicates dropped {f['duplicates']}, "
                f"published {f['published_frames']:,}, reconnects {f['reconnects']}, gaps {f['gaps']}"
            )
        if len(steady) < 2:
            print(f"  frames/s: fewer than 2 samples with all {expected_streams} streams subscribed")
            return live, 0.0
        a, b = steady[0], steady[-1]
        dt = b.t - a.t
        frames = sum(f["frames"] for f in b.feeds.values()) - sum(f["frames"] for f in a.feeds.values())
        rate = frames / dt
        first = next(s for s in self.samples if s.feeds)
        print(
            f"  frames/s received: {rate:,.0f} over {dt:.0f} s with all streams subscribed "
            f"(all subscribed {a.t - first.t:.0f} s after the first stats)"
        )
        for pid in sorted(set(a.cpu) & set(b.cpu)):
            print(f"  feed pid {pid}: CPU {100 * (b.cpu[pid] - a.cpu[pid]) / dt:.1f} % of one core over that span")
        return live, rate


def _subscribed(s: Sample) -> list[int]:
    return [int(f.get("streams_subscribed", 0)) for f in s.feeds.values()]


def _live(feed: dict[str, Any]) -> int:
    return sum(c["state"] in ("live", "rotating") for c in feed["connections"])


def _feed_child(up_pid: int) -> list[int]:
    """The `bookfeed feed` process among the children of `bookfeed up`."""
    try:
        children = psutil.Process(up_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in children:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd[1:4] == ["-m", "stack.cli", "feed"]:
            out.append(p.pid)
    return out


# ---- what was stored ---------------------------------------------------------------------------------------------


def _check_stored(run: Run, expected: set[str], not_trading: set[str]) -> dict[str, int]:
    rows = run.query("SELECT symbol, count(*) FROM order_books GROUP BY symbol")
    counts = {str(s): int(n) for s, n in rows}
    stored = set(counts)
    missing, extra = expected - stored, stored - expected
    dups = run.query("SELECT count(*) - count(DISTINCT (symbol, last_update_id, depth)) FROM order_books")[0][0]
    rejected = run.query("SELECT count(*) FROM rejected_messages")[0][0]
    gaps = Counter(_reason(str(r)) for (r,) in run.query("SELECT reason FROM feed_gaps"))
    n = sorted(counts.values())
    print(
        f"  stored: {sum(n):,} books of {len(stored)} symbols (expected {len(expected)}); books per symbol "
        f"min {n[0] if n else 0} median {n[len(n) // 2] if n else 0} max {n[-1] if n else 0}"
    )
    print(
        f"  missing {len(missing)} {sorted(missing)[:5]}, extra {len(extra)} {sorted(extra)[:5]} "
        f"(not TRADING among them: {len(extra & not_trading)}), duplicates {dups}, rejected {rejected}"
    )
    print(f"  feed_gaps by reason: {dict(gaps)}")
    run.check(f"books of all {len(expected)} expected symbols and of no other", not missing and not extra)
    run.check("no book stored twice", dups == 0)
    return counts


def _reason(reason: str) -> str:
    return reason.split(":", 1)[0] + (": rotation" if "rotation" in reason else "")


def _feed_log_summary(run: Run, log: Path) -> None:
    text_ = log.read_text(errors="replace") if log.exists() else ""
    lines = text_.splitlines()
    levels = Counter(w for line in lines for w in ("WARNING", "ERROR") if f" {w} " in line or f'"{w}"' in line)
    rotations = sum("without a gap" in line for line in lines)
    print(f"  feed log {log.name}: {len(lines)} lines, {dict(levels)}, rotations without a gap logged: {rotations}")


# ---- scenarios ---------------------------------------------------------------------------------------------------


def _up_run(run: Run, port: int, args: list[str], expected: set[str], not_trading: set[str], duration: int) -> None:
    cmd = up_command("--url", f"ws://127.0.0.1:{port}", *args, "--duration", str(duration))
    print("  $ bookfeed " + " ".join(a if len(a) < 80 else a[:60] + f"...({len(a)} chars)" for a in cmd[3:]))
    up = run.harness.start("up", cmd)
    sampler = Sampler(run, lambda: _feed_child(up.pid))
    sampler.start()
    t0 = time.monotonic()
    wait_until(lambda: not up.running(), timeout=duration + 900, what="bookfeed up", interval=1.0)
    sampler.done.set()
    sampler.join()
    print(
        f"  bookfeed up exited {up.popen.returncode} after {time.monotonic() - t0:.0f} s "
        f"(its last lines: {up.tail(300)!r})"
    )
    run.check("bookfeed up exits 0", up.popen.returncode == 0)
    live, _ = sampler.report(len(expected))
    run.check("at least 2 connections", live >= 2)
    _check_simulator(run, port)
    _check_stored(run, expected, not_trading)
    _feed_log_summary(run, run.work / "data" / "logs" / "feed.log")


def scenario_all(run: Run) -> None:
    port = _simulator(run, "--random-symbols", str(SIM_SYMBOLS))
    trading, others = _exchange_info(port)
    print(f"  simulator: {len(trading) + len(others)} symbols, {len(trading)} TRADING, {len(others)} not")
    _up_run(run, port, ["--rest-url", f"http://127.0.0.1:{port}", "--symbols", "all"], set(trading), others, 120)


def scenario_list600(run: Run) -> None:
    port = _simulator(run, "--random-symbols", str(SIM_SYMBOLS))
    trading, others = _exchange_info(port)
    names = trading[:600]
    _up_run(run, port, ["--symbols", ",".join(names)], set(names), others, 120)


def scenario_shards(run: Run, duration: int = 60) -> None:
    port = _simulator(run, "--random-symbols", str(SIM_SYMBOLS))
    trading, others = _exchange_info(port)
    migrate = run.harness.start("migrate", bookfeed_command("migrate"))
    wait_until(lambda: not migrate.running(), timeout=300, what="bookfeed migrate")
    run.check("bookfeed migrate exits 0", migrate.popen.returncode == 0)
    run.harness.start(
        "worker",
        worker_command(concurrency=2, name=f"symbols-{uuid.uuid4().hex[:6]}"),
        ready=log_line("ready."),
        timeout=120,
    )
    flags = ["--url", f"ws://127.0.0.1:{port}", "--rest-url", f"http://127.0.0.1:{port}", "--symbols", "all"]
    feeds = []
    for i in range(2):
        cmd = feed_command(*flags, "--shard", f"{i}/2", "--duration", str(duration))
        print("  $ bookfeed " + " ".join(cmd[3:]))
        ledger = {"BOOKFEED_LEDGER_PATH": str(run.work / f"ledger-{i}.tsv")}
        feeds.append(run.harness.start(f"feed-{i}", cmd, extra_env=ledger))
    sampler = Sampler(run, lambda: [f.pid for f in feeds if f.running()])
    sampler.start()
    wait_until(lambda: not any(f.running() for f in feeds), timeout=duration + 120, what="feeds", interval=1.0)
    sampler.done.set()
    sampler.join()
    run.check("both feeds exit 0", all(f.popen.returncode == 0 for f in feeds))
    drained = drain(run.redis, run.prefix, timeout=600)
    run.check("queue drained", drained)
    sampler.report(len(trading))
    _check_simulator(run, port)
    counts = _check_stored(run, set(trading), others)
    forwarded = [_ledger_symbols(run.work / f"ledger-{i}.tsv") for i in range(2)]
    for i, syms in enumerate(forwarded):
        share = {s for s in trading if shard_of(s, 2) == i}
        print(
            f"  shard {i}/2: forwarded {len(syms)} symbols, its share is {len(share)}, stored "
            f"{sum(counts.get(s, 0) for s in syms):,} books; outside its share: {len(syms - share)}"
        )
        run.check(f"shard {i}/2 forwarded exactly its share", syms == share)
        _feed_log_summary(run, run.work / "logs" / f"feed-{i}.log")
    run.check(
        "the shards are disjoint and cover every TRADING symbol",
        not forwarded[0] & forwarded[1] and forwarded[0] | forwarded[1] == set(trading),
    )


def _ledger_symbols(path: Path) -> set[str]:
    out = set()
    with path.open() as f:
        for line in f:
            stream = line.split("\t")[1]
            if stream:
                out.add(parse_stream_name(stream).symbol)
    return out


def scenario_rotation(run: Run, duration: int = 300) -> None:
    port = _simulator(
        run,
        "--symbols",
        ",".join(ROTATION_SYMBOLS),
        "--seed",
        str(ROTATION_SEED),
        "--max-lifetime",
        "60",
        "--shutdown-notice",
        "10",
    )
    run.harness.env["BOOKFEED_STREAMS_PER_CONNECTION"] = "2"  # 3 connections, each rotated about every 50 s
    run.harness.env["BOOKFEED_LEDGER_PATH"] = str(run.work / "ledger.tsv")
    print("  env BOOKFEED_STREAMS_PER_CONNECTION=2; simulator --max-lifetime 60 --shutdown-notice 10")
    _up_run(
        run, port, ["--symbols", ",".join(ROTATION_SYMBOLS), "--speed", "100ms"], set(ROTATION_SYMBOLS), set(), duration
    )
    forwarded: dict[str, set[int]] = {}
    with (run.work / "ledger.tsv").open() as f:
        for line in f:
            _, stream, luid = line.rstrip("\n").split("\t")
            forwarded.setdefault(parse_stream_name(stream).symbol, set()).add(int(luid))
    for symbol in ROTATION_SYMBOLS:
        ids = [
            int(i)
            for (i,) in run.query(
                "SELECT last_update_id FROM order_books WHERE symbol = :s ORDER BY last_update_id", s=symbol
            )
        ]
        sent = update_ids(symbol, seed=ROTATION_SEED, first=ids[0], last=ids[-1]) if ids else []
        missing, twice = sorted(set(sent) - set(ids)), len(ids) - len(set(ids))
        print(
            f"  {symbol}: stored {len(ids)}, sent between the first and last stored {len(sent)}, missing "
            f"{len(missing)} {missing[:3]}, twice {twice}, forwarded by the feed {len(forwarded.get(symbol, ()))}"
        )
        run.check(f"{symbol}: every frame sent stored exactly once", bool(ids) and ids == sent)
        listed = forwarded.get(symbol, set())
        run.check(f"{symbol}: every frame in the feed's ledger was stored", listed <= set(ids))
        # The ledger (BOOKFEED_LEDGER_PATH) promises one line per forwarded frame; a stored frame it lacks is a
        # line the feed lost (make chaos would count that frame as never received).
        run.check(
            f"{symbol}: the feed's ledger lists every stored frame ({len(set(ids) - listed)} not)", set(ids) <= listed
        )
    reasons = {str(r) for (r,) in run.query("SELECT DISTINCT reason FROM feed_gaps")}
    run.check("feed_gaps holds no rotation gap (only started/stopped)", reasons <= STARTED_STOPPED)
    run.check("the simulator ended connections at least 4 times each", _sim_stats(port)["connections_total"] >= 3 * 5)


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "all": scenario_all,
    "list600": scenario_list600,
    "shards": scenario_shards,
    "rotation": scenario_rotation,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.symbols", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--keep", action="store_true", help="keep the scenario's database (its URL is printed)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    with _run(args.scenario, args.keep) as run:
        try:
            SCENARIOS[args.scenario](run)
        except Exception as exc:  # a scenario that could not finish is a failure with its reason
            run.check(f"scenario finished ({type(exc).__name__}: {exc})", False)
        failed = [what for what, ok in run.checks if not ok]
    verdict = "FAIL: " + "; ".join(failed) if failed else "PASS"
    print(f"{args.scenario}: {verdict} ({time.monotonic() - t0:.0f} s wall)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
