"""`bookfeed up`: every process on one machine (embedded PostgreSQL/Redis where no URL is set), a live view of the
connections and the busiest symbols (redrawn in place on a terminal, with a warning line whenever `bookfeed status`
would not say healthy), the metrics URLs, and a clean stop: feed stopped, queues drained, every closed window
computed, exit 0.

It supervises subprocesses through stack.harness; it never imports worker code beyond the migrations runner and
the command lines."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import SecretStr
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from feed.broker import broker_app
from models.settings import Settings, env_name
from models.vocabulary import AVERAGES_TASK, METRICS_QUEUE, WINDOWS_S
from stack.embedded import EmbeddedPostgres, EmbeddedRedis, redact
from stack.harness import (
    Harness,
    beat_command,
    bookfeed_command,
    drain,
    feed_command,
    flower_command,
    free_port,
    log_line,
    port_free,
    simulate_command,
    worker_command,
)
from stack.live import LiveView
from stack.status import Status, check_status, ping_workers
from workers.schema import upgrade_to_head

__all__ = ["FLOWER_AUTH_FILE", "FLOWER_USER", "UpOptions", "child_env", "flower_env", "run_up", "simulator_command"]

logger = logging.getLogger(__name__)

FLOWER_USER = "bookfeed"
FLOWER_AUTH_FILE = "flower-auth"
STOP_ORDER = ("feed", "simulator", "beat", "flower", "worker")


@dataclass(frozen=True, slots=True)
class UpOptions:
    workers: int = 2
    duration_s: float | None = None
    flower_port: int = 5555
    interval_s: float = 2.0
    drain_timeout_s: float = 300.0
    simulate: bool = False  # start the built-in simulator and point the feed at it
    malformed_fraction: float = 0.0  # with `simulate`: the fraction of frames the simulator sends malformed
    random_symbols: int = 200  # with `simulate` and `--symbols all`: symbols the simulator makes up


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


def child_env(settings: Settings) -> dict[str, str]:
    """The settings `up` was given (flags, environment, .env) as the environment of the processes it starts, so
    every child reads the values `up` read: each field that was set, under its own variable name. The URLs are
    `up`'s to set (they may name the embedded servers)."""
    env: dict[str, str] = {}
    for name in sorted(settings.model_fields_set - {"database_url", "redis_url"}):
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple | list):
            value = ",".join(map(str, value))
        env[env_name(name)] = str(value)
    env[env_name("data_dir")] = str(settings.data_dir.resolve())
    return env


def simulator_command(port: int, settings: Settings, opts: UpOptions) -> list[str]:
    """`bookfeed simulate` serving the feed's symbols, or `opts.random_symbols` made-up ones for `--symbols all`."""
    faults = {"malformed_fraction": opts.malformed_fraction} if opts.malformed_fraction else {}
    if not settings.all_symbols:
        return simulate_command(port=port, symbols=settings.symbols, faults=faults)
    argv = bookfeed_command("simulate", "--port", str(port), "--random-symbols", str(opts.random_symbols))
    return argv + [f"--{name.replace('_', '-')}={value}" for name, value in faults.items()]


def run_up(settings: Settings, opts: UpOptions, out: Callable[[str], None] = print) -> int:
    """Run the whole pipeline until Ctrl-C/SIGTERM or `duration_s`; returns the exit code."""
    data = settings.data_dir.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pg = EmbeddedPostgres(data / "postgres") if not settings.database_url else None
    rd = EmbeddedRedis(data / "redis") if not settings.redis_url else None
    harness: Harness | None = None
    try:
        db_url = pg.start() if pg else settings.require_database_url()
        redis_url = rd.start() if rd else settings.require_redis_url()
        out(f"PostgreSQL: {'embedded, data in ' + str(pg.data_dir) if pg else 'from DATABASE_URL'}")
        where = (
            f"embedded at {redact(redis_url)} (password: per run), data in {rd.data_dir}" if rd else "from REDIS_URL"
        )
        out(f"Redis:      {where}")
        upgrade_to_head(db_url)
        out("schema migrated to head")
        env = {
            **os.environ,
            **child_env(settings),
            # In the environment, which only this user can read; never on a command line.
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "BOOKFEED_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
        }
        harness = Harness(logs, env)
        metrics_urls = _metrics_ports(settings, harness.env)
        harness.start("worker", worker_command(concurrency=opts.workers, name=f"bookfeed-{os.getpid()}"))
        harness.start("beat", beat_command(data / "celerybeat-schedule"))
        port = opts.flower_port if port_free(opts.flower_port) else free_port()
        flower_auth = flower_env(data)
        harness.start("flower", flower_command(port), extra_env=flower_auth)
        if opts.simulate:
            sim_port = free_port()
            harness.start("simulator", simulator_command(sim_port, settings, opts), ready=log_line("listening on"))
            # The feed reads its streams and, with `--symbols all`, exchangeInfo from the simulator.
            harness.env[env_name("url")] = f"ws://127.0.0.1:{sim_port}"
            harness.env[env_name("rest_url")] = f"http://127.0.0.1:{sim_port}"
            what = f"{opts.random_symbols} made-up symbols" if settings.all_symbols else "synthetic books"
            out(f"Simulator:  ws://127.0.0.1:{sim_port} (Binance-compatible, {what})")
        harness.start("feed", feed_command())
        # The console line is the one place the password is shown; it goes to no log.
        password = flower_auth["FLOWER_BASIC_AUTH"].split(":", 1)[1]
        out(f"Flower:     http://127.0.0.1:{port}  (user {FLOWER_USER}, password {password})")
        out(f"            the password is also in {data / FLOWER_AUTH_FILE}, readable by you only")
        out(
            f"SQL:        psql '{_psql_url(db_url)}'  (views: order_books, book_metrics, price_averages, "
            "rejected_messages, feed_gaps)"
        )
        out(f"logs:       {logs}")
        if metrics_urls:
            out(f"Metrics:    {metrics_urls}  (bookfeed status: the same check as the warning line below)")
        checked = settings.model_copy(update={"database_url": db_url, "redis_url": redis_url})
        return _supervise(harness, db_url, redis_url, checked, opts, out)
    finally:
        if harness is not None:
            harness.stop_all(STOP_ORDER)
        if rd:
            rd.stop()
        if pg:
            pg.stop()


def _metrics_ports(settings: Settings, env: dict[str, str]) -> str:
    """Choose the feed's and the worker's /metrics ports (the configured ones, or free ones when taken; 0 stays
    off), put them in the children's environment, and return the URLs to show."""
    urls = []
    for what, field in (("feed", "metrics_port"), ("workers", "worker_metrics_port")):
        port = int(getattr(settings, field))
        if port and not port_free(port):
            port = free_port()
        env[env_name(field)] = str(port)
        if port:
            urls.append(f"{what} http://127.0.0.1:{port}/metrics")
    return ", ".join(urls)


@contextlib.contextmanager
def _screen(out: Callable[[str], None]) -> Iterator[Callable[[Sequence[str]], None] | None]:
    """On a terminal (and printing to it), a rich Live display the view redraws in place; otherwise None."""
    if out is not print or not sys.stdout.isatty():
        yield None
        return
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(Text(""), console=Console(), auto_refresh=False) as live:
        yield lambda lines: live.update(Text("\n".join(lines)), refresh=True)


def _supervise(
    harness: Harness, db_url: str, redis_url: str, settings: Settings, opts: UpOptions, out: Callable[[str], None]
) -> int:
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    engine = create_engine(db_url, pool_size=1, pool_pre_ping=True)
    broker = redis.Redis.from_url(redis_url)
    prefix = settings.broker_key_prefix

    def status() -> Status:  # what `bookfeed status` checks, with a shorter ping to keep the ticks regular
        return check_status(settings, engine=engine, broker=broker, ping=lambda: ping_workers(settings, 0.5))

    view = LiveView(engine, broker, prefix, out, status=status)
    deadline = None if opts.duration_s is None else time.monotonic() + opts.duration_s

    def progress(line: str) -> None:
        out("  " + line)

    try:
        with _screen(out) as redraw:
            view.redraw = redraw
            while not stop.wait(opts.interval_s):
                problem = harness.exited(ignore=("flower",))
                if problem:
                    out(f"error: {problem}")
                    return 1
                view.tick()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        out("stopping: feed first, then draining the queues")
        harness.stop("feed", timeout=60)
        stop_s = time.time()
        if not drain(broker, prefix, timeout=opts.drain_timeout_s, progress=progress):
            out("error: the queues did not drain in time; stored data is complete up to what was processed")
            return 1
        app = broker_app(redis_url, key_prefix=prefix, name="bookfeed-up")
        for w in WINDOWS_S:  # every window closed by the stop, now that every frame is stored
            app.send_task(AVERAGES_TASK, kwargs={"window_s": w, "now_s": stop_s, "grace_s": 0.0}, queue=METRICS_QUEUE)
        if not drain(broker, prefix, timeout=opts.drain_timeout_s, progress=progress):
            out("error: the closing averages did not finish in time")
            return 1
        view.summary()
        return 0
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        broker.close()
        engine.dispose()


def _psql_url(db_url: str) -> str:
    """A libpq URL to show the user: never with the password."""
    url = make_url(db_url)
    if url.password:
        return url.set(drivername="postgresql").render_as_string(hide_password=True)
    return db_url.replace("postgresql+psycopg2://", "postgresql://")
