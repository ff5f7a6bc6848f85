"""`make chaos`: the delivery promise under faults.

Drives the simulator at a steady rate through feed -> Redis -> two worker nodes -> PostgreSQL (all embedded, so they
can be killed and restarted) while it SIGKILLs workers, takes PostgreSQL down, fills Redis to its memory limit while
PostgreSQL is down (so workers cannot publish their retries), restarts Redis, restarts the feed and starts a second
beat. Then it compares the feed's ledger of received frames with what PostgreSQL holds and prints:
frames sent, received, stored, rejected, duplicated, lost, the task messages lost between Redis and a worker that the
outbox's reaper enqueued again, and the longest time from receive to stored. Exit 1 when anything was duplicated or
lost, or an average window is missing or wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis
from sqlalchemy import Engine, create_engine, text

from models.vocabulary import WINDOWS_S, stream_name
from stack.embedded import EmbeddedPostgres, EmbeddedRedis
from stack.harness import (
    Harness,
    beat_command,
    drain,
    feed_command,
    free_port,
    log_line,
    simulate_command,
    worker_command,
)
from workers.audit import averages_mismatches, check_ledger, duplicated_books, read_ledger
from workers.averages import compute_averages
from workers.outbox import OutboxKeys
from workers.schema import upgrade_to_head

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
STREAMS = (stream_name("BTCUSDT", 20), stream_name("ETHUSDT", 20), stream_name("BNBUSDT", 10))
KEY_PREFIX = "bookfeed-chaos:"  # queues under a prefix, as a shared Redis would have them
NODE_DOWN_S = 3.0  # how long a SIGKILLed worker node stays down
REDIS_DOWN_S = 5.0  # how long Redis stays down when restarted
READY_TIMEOUT_S = 120.0
# Lines that say a process is ready (its log, read from the harness).
WORKER_READY, BEAT_READY, SIM_READY = "ready.", "beat: Starting", "listening on"
FEED_READY = ("connected to", "): live")  # one connection, or the first of a pool ("connection 1 (3 streams): live")


class Drill:
    """The processes of one run and the faults applied to them."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.t0 = time.monotonic()
        self.pg = EmbeddedPostgres(work / "pg")
        self.rd = EmbeddedRedis(work / "redis")
        self.harness = Harness(work, {})
        self.events: list[str] = []
        self.ledger = work / "ledger.tsv"
        self.redis_url = ""
        self.sim_port = free_port()

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        self.events.append(line)
        print(line, flush=True)

    def setup(self) -> tuple[str, str]:
        db_url = self.pg.start()
        redis_url = self.redis_url = self.rd.start()
        upgrade_to_head(db_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
        env.update(
            DATABASE_URL=db_url,
            REDIS_URL=redis_url,
            BOOKFEED_LOG_FORMAT="text",
            BOOKFEED_LEDGER_PATH=str(self.ledger),
            BOOKFEED_URL=f"ws://127.0.0.1:{self.sim_port}/stream?streams={'/'.join(STREAMS)}",
            BOOKFEED_VISIBILITY_TIMEOUT_S=str(self.args.visibility_timeout),
            BOOKFEED_BROKER_KEY_PREFIX=KEY_PREFIX,
            PYTHONUNBUFFERED="1",
        )
        self.harness.env = env
        sim = simulate_command(
            port=self.sim_port,
            symbols=SYMBOLS,
            rate=self.args.rate,
            seed=7,
            faults={"malformed_fraction": 0.005, "crossed_fraction": 0.002, "one_sided_fraction": 0.002},
        )
        self.harness.start("simulator", sim, ready=log_line(SIM_READY), timeout=READY_TIMEOUT_S)
        for w in ("worker1", "worker2"):
            self.start_worker(w)
        self.start_beat("beat")
        self.start_feed()
        return db_url, redis_url

    def start_worker(self, name: str) -> None:
        argv = worker_command(concurrency=1, name=name)
        self.harness.start(name, argv, ready=log_line(WORKER_READY), timeout=READY_TIMEOUT_S)

    def start_beat(self, name: str) -> None:
        argv = beat_command(self.work / f"{name}-schedule")
        self.harness.start(name, argv, ready=log_line(BEAT_READY), timeout=READY_TIMEOUT_S)

    def start_feed(self) -> None:
        ready = [log_line(line) for line in FEED_READY]
        self.harness.start("feed", feed_command(), ready=lambda c: any(r(c) for r in ready), timeout=READY_TIMEOUT_S)

    # ---- faults -------------------------------------------------------------------------------------------
    def kill_worker_node(self, name: str) -> None:
        self.log(f"SIGKILL worker node {name} (main process and pool)")
        self.harness.stop(name, sig=signal.SIGKILL)  # the whole group, like an OOM kill of the container
        time.sleep(NODE_DOWN_S)
        self.start_worker(name)
        self.log(f"{name} restarted")

    def kill_worker_child(self, name: str) -> None:
        children = psutil.Process(self.harness.children[name].pid).children()
        if children:
            children[0].kill()
            self.log(f"SIGKILL pool process {children[0].pid} of {name} (reject on worker lost)")

    def postgres_outage(self, seconds: float) -> None:
        self.log(f"PostgreSQL down for {seconds:.0f}s")
        self.pg.pause()
        time.sleep(seconds)
        self.pg.resume()
        self.log("PostgreSQL back")

    def redis_full_while_postgres_down(self, seconds: float) -> None:
        """Redis at its memory limit (noeviction) while PostgreSQL is down: every retry a worker tries to publish
        is refused with OOM, and the feed must hold its frames (high-water mark) instead of filling Redis."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        used = int(client.info("memory")["used_memory"])
        self.log(f"PostgreSQL down and Redis capped at its current use ({used / 1e6:.1f} MB) for {seconds:.0f}s")
        self.pg.pause()
        client.config_set("maxmemory", str(used))
        time.sleep(seconds)
        self.pg.resume()
        self.log("PostgreSQL back")
        time.sleep(min(10.0, seconds / 2))  # retries due now still meet a full Redis
        client.config_set("maxmemory", "0")
        self.log("Redis memory limit lifted")
        client.close()

    def redis_restart(self) -> None:
        self.log("Redis restart (SIGTERM, AOF kept)")
        self.rd.stop()
        time.sleep(REDIS_DOWN_S)
        self.rd.start()  # returns once it answers, its AOF loaded
        self.log("Redis back")

    def feed_restart(self) -> None:
        self.log("feed restart (SIGTERM: publish what it holds, then a new process)")
        self.harness.stop("feed", timeout=60)
        self.start_feed()

    def second_beat(self, seconds: float) -> None:
        self.log(f"a second beat started by mistake, for {seconds:.0f}s")
        self.start_beat("beat2")
        time.sleep(seconds)
        self.harness.stop("beat2")
        self.log("second beat stopped")

    def shutdown(self) -> None:
        self.harness.stop_all()
        self.rd.stop()
        self.pg.stop()


def schedule(d: Drill, duration: float, pg_outage: float) -> list[tuple[float, Callable[[], None]]]:
    """Faults spread over the run (times scale with --duration; 300 s gives the layout below)."""
    f = duration / 300.0
    return [
        (30 * f, lambda: d.kill_worker_node("worker1")),
        (60 * f, lambda: d.postgres_outage(pg_outage)),
        (60 * f + pg_outage + 3, lambda: d.kill_worker_child("worker2")),
        (115 * f, lambda: d.redis_full_while_postgres_down(25 * f)),
        (150 * f, d.redis_restart),
        (185 * f, d.feed_restart),
        (205 * f, lambda: d.second_beat(45 * f)),
        (265 * f, lambda: d.kill_worker_node("worker2")),
    ]


def analyse(d: Drill, engine: Engine, final_now: float, reaped: int) -> dict[str, Any]:
    entries = read_ledger(d.ledger)
    report = check_ledger(engine, entries)
    with engine.connect() as conn:
        lat = conn.execute(
            text("SELECT max(extract(epoch FROM stored_at - min_received_at)) FROM ingest_batches")
        ).scalar()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.sim_port}/control/stats", timeout=5) as r:
            sim_stats = json.loads(r.read())
        sent = sum(int(v) for v in sim_stats.get("frames", {}).values())
    except OSError:
        sent = -1
    return {
        "frames sent by the simulator": sent,
        "frames received by the feed": report.received,
        "not received (feed restarting: outside the promise)": sent - report.received if sent >= 0 else "n/a",
        "stored as books": report.stored,
        "recorded as rejected": report.rejected,
        "duplicated": duplicated_books(engine),
        "lost": len(report.missing),
        "lost examples": report.missing[:5],
        "average windows missing or wrong": len(averages_mismatches(engine, closed_before_s=final_now)),
        "task messages lost in transit, enqueued again (outbox)": reaped,
        "longest receive -> stored (s)": round(float(lat or 0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (default 300)")
    ap.add_argument("--rate", type=float, default=300.0, help="simulator frames/s (default 300)")
    ap.add_argument(
        "--pg-outage",
        type=float,
        help="seconds PostgreSQL stays down (default: 45 per 300 s of --duration, so that faults never overlap)",
    )
    ap.add_argument(
        "--visibility-timeout",
        type=int,
        default=60,
        help="broker visibility timeout for this run, s (default 60; production default 300)",
    )
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bookfeed-chaos-"))
    d = Drill(work, args)
    print(f"chaos run in {work} for {args.duration:.0f}s at {args.rate:.0f} frames/s", flush=True)
    try:
        db_url, redis_url = d.setup()
        d.log("pipeline started")
        start = time.monotonic()
        pg_outage = args.pg_outage if args.pg_outage is not None else 45.0 * args.duration / 300.0
        for at, fault in schedule(d, args.duration, pg_outage):
            time.sleep(max(0.0, start + at - time.monotonic()))
            fault()
        time.sleep(max(0.0, start + args.duration - time.monotonic()))
        d.log("stopping the feed")
        d.harness.stop("feed", timeout=60)
        engine = create_engine(db_url)
        received = len(read_ledger(d.ledger))

        def accounted() -> bool:
            with engine.connect() as conn:
                n = conn.execute(
                    text("SELECT (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM rejected_frames)")
                ).scalar_one()
            return int(n) >= received

        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        drain(
            client,
            KEY_PREFIX,
            timeout=max(600.0, 3 * args.visibility_timeout),
            until=accounted,
            progress=d.log,
            interval=1.0,
        )
        reaped = int(client.get(OutboxKeys(KEY_PREFIX).reaped) or 0)
        client.close()
        final_now = time.time()
        for w in WINDOWS_S:
            compute_averages(engine, window_s=w, now_s=final_now, grace_s=0.0, lookback_s=600.0)
        report = analyse(d, engine, final_now, reaped)
        engine.dispose()
    finally:
        d.shutdown()
    print("\nchaos report")
    for line in d.events:
        print("  " + line)
    for k, v in report.items():
        print(f"  {k:<55} {v}")
    ok = report["duplicated"] == 0 and report["lost"] == 0 and report["average windows missing or wrong"] == 0
    print("RESULT: " + ("PASS" if ok else "FAIL") + f" (logs in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
