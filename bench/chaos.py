"""`make chaos`: the delivery promise under faults.

Drives the simulator at a steady rate through feed -> Redis -> two worker nodes -> PostgreSQL (all embedded, so they
can be killed and restarted) while it SIGKILLs workers, takes PostgreSQL down, fills Redis to its memory limit while
PostgreSQL is down (so workers cannot publish their retries), restarts Redis, restarts the feed and starts a second
beat. Then it compares the feed's ledger of received frames with what PostgreSQL holds and prints:
frames sent, received, stored, rejected, duplicated, lost, and the longest time from receive to stored. Exit 1 when
anything was duplicated or lost, or an average window is missing or wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
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

from feed.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from feed.up import beat_command, worker_command
from models.messages import INGEST_QUEUE
from models.schema import upgrade_to_head
from workers.audit import averages_mismatches, check_ledger, duplicated_books, read_ledger
from workers.averages import compute_averages

STREAMS = ("btcusdt@depth20", "ethusdt@depth20", "bnbusdt@depth10")


class Drill:
    """The processes of one run and the faults applied to them."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.t0 = time.monotonic()
        self.pg = EmbeddedPostgres(work / "pg")
        self.rd = EmbeddedRedis(work / "redis")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.events: list[str] = []
        self.ledger = work / "ledger.tsv"
        self.env: dict[str, str] = {}
        self.redis_url = ""
        self.sim_port = free_port()

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        self.events.append(line)
        print(line, flush=True)

    def start(self, name: str, args: list[str]) -> None:
        with open(self.work / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        if sig == signal.SIGKILL:
            os.killpg(p.pid, signal.SIGKILL)  # the node and its pool children, like an OOM kill of the container
        else:
            p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def setup(self) -> tuple[str, str]:
        db_url = self.pg.start()
        redis_url = self.redis_url = self.rd.start()
        upgrade_to_head(db_url)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
        self.env.update(
            DATABASE_URL=db_url,
            REDIS_URL=redis_url,
            BOOKFEED_LOG_FORMAT="text",
            BOOKFEED_LEDGER_PATH=str(self.ledger),
            BOOKFEED_URL=f"ws://127.0.0.1:{self.sim_port}/stream?streams={'/'.join(STREAMS)}",
            BOOKFEED_VISIBILITY_TIMEOUT_S=str(self.args.visibility_timeout),
            PYTHONUNBUFFERED="1",
        )
        py = sys.executable
        self.start(
            "simulator",
            [
                py,
                "-m",
                "feed.cli",
                "simulate",
                "--port",
                str(self.sim_port),
                "--symbols",
                "btcusdt,ethusdt,bnbusdt",
                "--rate",
                str(self.args.rate),
                "--seed",
                "7",
                "--malformed-fraction",
                "0.005",
                "--crossed-fraction",
                "0.002",
                "--one-sided-fraction",
                "0.002",
            ],
        )
        for w in ("worker1", "worker2"):
            self.start_worker(w)
        self.start_beat("beat")
        time.sleep(3)
        self.start_feed()
        return db_url, redis_url

    def start_worker(self, name: str) -> None:
        self.start(name, worker_command(concurrency=1, name=name))

    def start_beat(self, name: str) -> None:
        self.start(name, beat_command(self.work / f"{name}-schedule"))

    def start_feed(self) -> None:
        self.start("feed", [sys.executable, "-m", "feed.cli", "feed"])

    # ---- faults -------------------------------------------------------------------------------------------
    def kill_worker_node(self, name: str) -> None:
        self.log(f"SIGKILL worker node {name} (main process and pool)")
        self.stop(name, signal.SIGKILL)
        time.sleep(3)
        self.start_worker(name)
        self.log(f"{name} restarted")

    def kill_worker_child(self, name: str) -> None:
        p = self.procs[name]
        children = psutil.Process(p.pid).children()
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
        time.sleep(5)
        self.rd.start()
        self.log("Redis back")

    def feed_restart(self) -> None:
        self.log("feed restart (SIGTERM: publish what it holds, then a new process)")
        self.stop("feed")
        self.start_feed()

    def second_beat(self, seconds: float) -> None:
        self.log(f"a second beat started by mistake, for {seconds:.0f}s")
        self.start_beat("beat2")
        time.sleep(seconds)
        self.stop("beat2")
        self.log("second beat stopped")

    def shutdown(self) -> None:
        for name in list(self.procs):
            self.stop(name)
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


def drain(d: Drill, client_url: str, expected: Callable[[], bool], timeout: float) -> bool:
    client = redis.Redis.from_url(client_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expected():
            return True
        try:
            left = client.llen(INGEST_QUEUE) + client.hlen("unacked")
        except redis.RedisError:
            left = -1
        d.log(f"draining: {left} task(s) queued or reserved")
        time.sleep(5)
    return expected()


def analyse(d: Drill, engine: Engine, final_now: float) -> dict[str, Any]:
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
        "longest receive -> stored (s)": round(float(lat or 0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (default 300)")
    ap.add_argument("--rate", type=float, default=300.0, help="simulator frames/s (default 300)")
    ap.add_argument("--pg-outage", type=float, default=45.0, help="seconds PostgreSQL stays down (default 45)")
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
        for at, fault in schedule(d, args.duration, args.pg_outage):
            time.sleep(max(0.0, start + at - time.monotonic()))
            fault()
        time.sleep(max(0.0, start + args.duration - time.monotonic()))
        d.log("stopping the feed")
        d.stop("feed")
        engine = create_engine(db_url)
        received = len(read_ledger(d.ledger))

        def accounted() -> bool:
            with engine.connect() as conn:
                n = conn.execute(
                    text("SELECT (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM rejected_frames)")
                ).scalar_one()
            return int(n) >= received

        drain(d, redis_url, accounted, timeout=max(600.0, 3 * args.visibility_timeout))
        final_now = time.time()
        for w in (30, 60):
            compute_averages(engine, window_s=w, now_s=final_now, grace_s=0.0, lookback_s=600.0)
        report = analyse(d, engine, final_now)
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
