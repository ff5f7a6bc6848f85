"""`bookfeed up`: every process on one machine (embedded PostgreSQL/Redis where no URL is set), a live line per
symbol, and a clean stop: feed stopped, queue drained, every closed window computed, exit 0.

It supervises subprocesses only; it never imports worker code."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from feed.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from feed.publisher import broker_app
from feed.service import read_feed_stats
from models.messages import AVERAGES_TASK, INGEST_QUEUE, METRICS_QUEUE
from models.schema import upgrade_to_head
from models.settings import Settings

__all__ = ["FLOWER_USER", "UpOptions", "beat_command", "flower_command", "flower_env", "run_up", "worker_command"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpOptions:
    workers: int = 2
    duration_s: float | None = None
    flower_port: int = 5555
    interval_s: float = 2.0
    drain_timeout_s: float = 300.0
    simulate: bool = False  # start the built-in simulator and point the feed at it
    simulator_args: tuple[str, ...] = ()


@dataclass
class _Procs:
    logs: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
        # A new session: the terminal's Ctrl-C reaches `up` only, which then stops the children in order.
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(extra_env or {})}, start_new_session=True
        )

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def check(self) -> str | None:
        for name, p in self.procs.items():
            if p.poll() is not None and name != "flower":
                return f"{name} exited with code {p.returncode}; see {self.logs / (name + '.log')}"
        return None


_CELERY = (sys.executable, "-m", "celery", "-A", "workers")


def worker_command(*, concurrency: int, name: str) -> list[str]:
    """`celery -A workers worker` on both queues, as `bookfeed up`, the tests and `make chaos` start it."""
    return [
        *_CELERY,
        "worker",
        "-Q",
        f"{INGEST_QUEUE},{METRICS_QUEUE}",
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
    ]


def beat_command(schedule: Path) -> list[str]:
    """`celery -A workers beat` with its schedule file at `schedule`."""
    return [*_CELERY, "beat", "--schedule", str(schedule), "--loglevel", "INFO"]


FLOWER_USER = "bookfeed"
FLOWER_AUTH_FILE = "flower-auth"


def flower_command(port: int) -> list[str]:
    """`celery -A workers flower` on loopback only. The credentials go in FLOWER_BASIC_AUTH (`flower_env`), never
    on the command line, which every local user can read in `ps`."""
    return [*_CELERY, "flower", f"--port={port}", "--address=127.0.0.1"]


def flower_env(data_dir: Path) -> dict[str, str]:
    """Flower's basic-auth setting with a new random password for this run, also written to
    `data_dir/flower-auth` (mode 0600) as `user:password`, so only the user who started `bookfeed up` can log in."""
    credentials = f"{FLOWER_USER}:{secrets.token_urlsafe(24)}"
    path = data_dir / FLOWER_AUTH_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an older run keeps its mode through O_CREAT
        os.write(fd, (credentials + "\n").encode())
    finally:
        os.close(fd)
    return {"FLOWER_BASIC_AUTH": credentials}


def run_up(settings: Settings, opts: UpOptions, out: Callable[[str], None] = print) -> int:
    """Run the whole pipeline until Ctrl-C/SIGTERM or `duration_s`; returns the exit code."""
    data = settings.data_dir.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pg = EmbeddedPostgres(data / "postgres") if not settings.database_url else None
    rd = EmbeddedRedis(data / "redis") if not settings.redis_url else None
    procs: _Procs | None = None
    try:
        db_url = pg.start() if pg else settings.require_database_url()
        redis_url = rd.start() if rd else settings.require_redis_url()
        out(f"PostgreSQL: {'embedded, data in ' + str(pg.data_dir) if pg else 'from DATABASE_URL'}")
        out(f"Redis:      {'embedded at ' + redis_url + ', data in ' + str(rd.data_dir) if rd else 'from REDIS_URL'}")
        upgrade_to_head(db_url)
        out("schema migrated to head")
        env = {
            **os.environ,
            **_feed_env(settings),
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "BOOKFEED_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
        }
        procs = _Procs(logs, env)
        procs.start("worker", worker_command(concurrency=opts.workers, name=f"bookfeed-{os.getpid()}"))
        procs.start("beat", beat_command(data / "celerybeat-schedule"))
        port = opts.flower_port if _port_free(opts.flower_port) else free_port()
        flower_auth = flower_env(data)
        procs.start("flower", flower_command(port), flower_auth)
        if opts.simulate:
            sim_port = free_port()
            procs.start(
                "simulator",
                [
                    sys.executable,
                    "-m",
                    "feed.cli",
                    "simulate",
                    "--port",
                    str(sim_port),
                    "--symbols",
                    ",".join(settings.symbols),
                    *opts.simulator_args,
                ],
            )
            env["BOOKFEED_URL"] = f"ws://127.0.0.1:{sim_port}"
            out(f"Simulator:  ws://127.0.0.1:{sim_port} (Binance-compatible, synthetic books)")
        procs.start("feed", [sys.executable, "-m", "feed.cli", "feed"])
        # The console line is the one place the password is shown; it goes to no log.
        password = flower_auth["FLOWER_BASIC_AUTH"].split(":", 1)[1]
        out(f"Flower:     http://127.0.0.1:{port}  (user {FLOWER_USER}, password {password})")
        out(f"            the password is also in {data / FLOWER_AUTH_FILE}, readable by you only")
        out(
            f"SQL:        psql '{_psql_url(db_url)}'  (views: order_books, book_metrics, price_averages, "
            "rejected_messages, feed_gaps)"
        )
        out(f"logs:       {logs}")
        return _supervise(procs, db_url, redis_url, settings.broker_key_prefix, opts, out)
    finally:
        if procs is not None:
            for name in ("feed", "simulator", "beat", "flower", "worker"):
                procs.stop(name)
        if rd:
            rd.stop()
        if pg:
            pg.stop()


def _supervise(
    procs: _Procs, db_url: str, redis_url: str, prefix: str, opts: UpOptions, out: Callable[[str], None]
) -> int:
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    engine = create_engine(db_url, pool_size=1, pool_pre_ping=True)
    broker = _Broker(redis.Redis.from_url(redis_url), prefix)
    deadline = None if opts.duration_s is None else time.monotonic() + opts.duration_s
    display = _Display(engine, broker, out)
    try:
        while not stop.wait(opts.interval_s):
            problem = procs.check()
            if problem:
                out(f"error: {problem}")
                return 1
            display.tick()
            if deadline is not None and time.monotonic() >= deadline:
                break
        out("stopping: feed first, then draining the queue")
        procs.stop("feed", timeout=60)
        stop_ns = time.time()
        if not _drain(broker, opts.drain_timeout_s, out):
            out("error: the queue did not drain in time; stored data is complete up to what was processed")
            return 1
        app = broker_app(redis_url, key_prefix=prefix, name="bookfeed-up")
        for w in (30, 60):
            app.send_task(AVERAGES_TASK, kwargs={"window_s": w, "now_s": stop_ns, "grace_s": 0.0}, queue=METRICS_QUEUE)
        if not _drain(broker, opts.drain_timeout_s, out):
            return 1
        display.summary()
        return 0
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        engine.dispose()


@dataclass(frozen=True)
class _Broker:
    """Read-only view of the Celery queues in Redis (kombu's key layout, under the deployment's key prefix)."""

    client: redis.Redis
    prefix: str = ""

    def queued(self, queue: str = INGEST_QUEUE) -> int:
        return int(self.client.llen(self.prefix + queue))

    def pending(self) -> int:
        """Tasks queued or reserved (with acks_late, reserved tasks sit in the 'unacked' hash until acknowledged)."""
        return self.queued(INGEST_QUEUE) + self.queued(METRICS_QUEUE) + int(self.client.hlen(self.prefix + "unacked"))


def _drain(broker: _Broker, timeout_s: float, out: Callable[[str], None]) -> bool:
    """Wait until no task is queued or reserved, twice in a row half a second apart."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        n = broker.pending()
        if n == 0:
            time.sleep(0.5)
            if broker.pending() == 0:
                return True
        if n != last:
            out(f"  draining: {n} task(s) left")
            last = n
        time.sleep(0.5)
    return False


class _Display:
    """One line per symbol: frames/s, last price and spread, latest 30 s and 1 min averages, queue depth."""

    def __init__(self, engine: Engine, broker: _Broker, out: Callable[[str], None]) -> None:
        self.engine, self.broker, self.out = engine, broker, out
        self.prev: dict[str, tuple[float, int]] = {}

    def tick(self) -> None:
        stats = read_feed_stats(self.broker.client, self.broker.prefix)
        streams: dict[str, int] = {}
        for s in stats:
            for k, v in s.get("per_stream", {}).items():
                streams[k] = streams.get(k, 0) + int(v)
        queue = self.broker.queued()
        now = time.monotonic()
        lines = []
        with self.engine.connect() as conn:
            for stream in sorted(streams):
                if stream == "?":
                    continue
                symbol = stream.split("@", 1)[0].upper()
                t0, n0 = self.prev.get(stream, (now, streams[stream]))
                rate = (streams[stream] - n0) / (now - t0) if now > t0 else 0.0
                self.prev[stream] = (now, streams[stream])
                last = conn.execute(
                    text(
                        "SELECT price, spread FROM book_snapshots WHERE exchange = 'binance' AND symbol = :s "
                        "ORDER BY received_at DESC LIMIT 1"
                    ),
                    {"s": symbol},
                ).first()
                avgs = {
                    w: conn.execute(
                        text(
                            "SELECT avg_price, samples FROM price_average_windows WHERE exchange = 'binance' "
                            "AND symbol = :s AND window_seconds = :w ORDER BY window_start DESC LIMIT 1"
                        ),
                        {"s": symbol, "w": w},
                    ).first()
                    for w in (30, 60)
                }
                lines.append(
                    f"{symbol:<12} {rate:8.1f} frames/s  price {_num(last and last[0]):>14}  "
                    f"spread {_num(last and last[1]):>12}  avg30s {_num(avgs[30] and avgs[30][0]):>14}  "
                    f"avg1m {_num(avgs[60] and avgs[60][0]):>14}  queue {queue}"
                )
        dropped = sum(int(s.get("dropped_frames", 0)) for s in stats)
        dup = sum(int(s.get("duplicates", 0)) for s in stats)
        head = time.strftime("%H:%M:%S") + f"  feeds {len(stats)}  duplicates dropped {dup}  buffer-dropped {dropped}"
        self.out(head)
        for line in lines:
            self.out("  " + line)

    def summary(self) -> None:
        with self.engine.connect() as conn:
            books = conn.execute(text("SELECT count(*) FROM book_snapshots")).scalar()
            rejected = conn.execute(text("SELECT count(*) FROM rejected_frames")).scalar()
            rows = conn.execute(
                text(
                    "SELECT symbol, window_seconds, window_start, avg_price, samples, complete FROM ("
                    "  SELECT *, row_number() OVER (PARTITION BY symbol, window_seconds"
                    "                               ORDER BY window_start DESC) AS n"
                    "  FROM price_averages) a WHERE n <= 2 ORDER BY symbol, window_seconds, window_start"
                )
            ).all()
        self.out(f"stored books: {books}, rejected frames: {rejected}")
        self.out("latest rows of price_averages:")
        self.out(
            f"  {'symbol':<12} {'window':>6}  {'window_start (UTC)':<20} {'avg_price':>16} {'samples':>8} complete"
        )
        for symbol, w, start, avg, samples, complete in rows:
            self.out(f"  {symbol:<12} {w:>5}s  {start:%Y-%m-%d %H:%M:%S} {avg:>16.8f} {samples:>8} {complete}")


def _feed_env(s: Settings) -> dict[str, str]:
    """The settings the children must share with `up`, whether they came from flags or the environment."""
    return {
        "BOOKFEED_URL": s.url,
        "BOOKFEED_SYMBOLS": ",".join(s.symbols),
        "BOOKFEED_DEPTH": str(s.depth),
        "BOOKFEED_SPEED": s.speed,
        "BOOKFEED_BATCH_MAX_FRAMES": str(s.batch_max_frames),
        "BOOKFEED_BATCH_MAX_WAIT_MS": str(s.batch_max_wait_ms),
        "BOOKFEED_DATA_DIR": str(s.data_dir.resolve()),
        "BOOKFEED_BROKER_KEY_PREFIX": s.broker_key_prefix,
    }


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _psql_url(db_url: str) -> str:
    """A libpq URL to show the user: never with the password."""
    url = make_url(db_url)
    if url.password:
        return url.set(drivername="postgresql").render_as_string(hide_password=True)
    return db_url.replace("postgresql+psycopg2://", "postgresql://")
