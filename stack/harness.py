"""The one process harness of `bookfeed up`, `make chaos`, the benches and the tests.

- start: a child in a session of its own (a Ctrl-C in the terminal reaches its parent only), output in a log file;
- wait until ready: a line in its log, an open port or an answered ping, polled; never a fixed sleep;
- stop: SIGTERM to the child, SIGKILL to its whole process group when it does not exit in time;
- drain: wait until the broker holds no task, queued (ingest and metrics) or reserved (kombu's unacked hash), and no
  batch waits in the outbox (workers/outbox.py: one whose message was lost, until beat's reaper re-enqueues it),
  under the deployment's key prefix;
- one builder per command line: `bookfeed feed|simulate|up` here, the Celery ones from workers.commands.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from models.errors import PipelineError
from models.vocabulary import INGEST_QUEUE, QUEUES
from workers.commands import beat_command, flower_command, worker_command
from workers.outbox import OutboxKeys

__all__ = [
    "ROOT",
    "Child",
    "Harness",
    "NotReadyError",
    "Ready",
    "beat_command",
    "bookfeed_command",
    "drain",
    "feed_command",
    "flower_command",
    "free_port",
    "log_line",
    "pending_tasks",
    "port_free",
    "port_open",
    "redis_answers",
    "simulate_command",
    "start_process",
    "stop_process",
    "up_command",
    "wait_until",
    "worker_command",
]

# The checkout (the tests run their children here).
ROOT = Path(__file__).resolve().parent.parent
UNACKED_KEY = "unacked"  # kombu's Redis transport: tasks delivered to a worker and not yet acknowledged


class NotReadyError(PipelineError):
    """A child exited before it was ready, or a condition did not hold in time."""


def wait_until(
    cond: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll `cond` every `interval` seconds until it holds. NotReadyError after `timeout` seconds, or as soon as
    `alive()` turns false (the process being waited for has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if not alive():
            raise NotReadyError(f"{what}: the process exited")
        if time.monotonic() >= deadline:
            raise NotReadyError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- processes -------------------------------------------------------------------------------------------------


@dataclass
class Child:
    """A started process: its name, its Popen and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_start: int = 0  # size of the log before this process wrote to it (a restarted child appends)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> bytes:
        """What this process has written to its log so far."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_start)
                return f.read()
        except OSError:
            return b""

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:].decode(errors="replace")

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        return stop_process(self.popen, timeout=timeout, sig=sig)


Ready = Callable[[Child], bool]


def log_line(text: str | bytes) -> Ready:
    """Ready once `text` appears in what the child wrote to its log (not in an earlier run's lines)."""
    needle = text.encode() if isinstance(text, str) else text
    return lambda child: needle in child.output()


def port_open(port: int, host: str = "127.0.0.1") -> Ready:
    """Ready once something accepts TCP connections on host:port."""

    def check(_: Child) -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def redis_answers(url: str) -> Callable[[], bool]:
    """True once the Redis at `url` answers PING (a server still loading its AOF does not)."""

    def check() -> bool:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return check


def start_process(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    ready: Ready | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
) -> Child:
    """Start `argv` in a new session with stdout and stderr appended to `log`; with `ready`, return only once it
    holds (NotReadyError with the log's tail if the process exits first or `timeout` passes; it is then stopped)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        log_start = out.tell()
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(name or Path(argv[0]).name, popen, log, log_start)
    if ready is not None:
        try:
            wait_until(lambda: ready(child), timeout=timeout, what=f"{child.name} ready", alive=child.running)
        except NotReadyError as exc:
            child.stop(timeout=5)
            raise NotReadyError(f"{exc}; its log ({log}) ends with:\n{child.tail()}") from None
    return child


def stop_process(popen: subprocess.Popen[bytes], *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
    """Send `sig` to the process (SIGKILL goes to its whole group at once), wait `timeout` seconds, then SIGKILL its
    whole process group; whatever of the group outlives its leader (a pool child) is killed too. Returns the exit
    code."""
    if popen.poll() is None:
        if sig == signal.SIGKILL:
            _kill_group(popen.pid)
        else:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(popen.pid)
            popen.wait()
    _kill_group(popen.pid)  # stragglers only: the leader has exited
    return popen.returncode


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Harness:
    """Named children sharing one environment and one folder of logs (`<logs>/<name>.log`)."""

    logs: Path
    env: dict[str, str]
    cwd: Path | None = None  # None: the caller's working directory
    children: dict[str, Child] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        extra_env: Mapping[str, str] | None = None,
        ready: Ready | None = None,
        timeout: float = 60.0,
    ) -> Child:
        child = start_process(
            argv,
            log=self.logs / f"{name}.log",
            env={**self.env, **(extra_env or {})},
            name=name,
            ready=ready,
            timeout=timeout,
            cwd=self.cwd,
        )
        self.children[name] = child
        return child

    def stop(self, name: str, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        child = self.children.pop(name, None)
        return None if child is None else child.stop(timeout, sig)

    def stop_all(self, order: Iterable[str] = ()) -> None:
        """Stop the children named in `order` first, in that order, then the rest, newest first."""
        for name in [*order, *reversed(list(self.children))]:
            self.stop(name)

    def exited(self, ignore: Iterable[str] = ()) -> str | None:
        """A line about the first child that has exited, unless its name is in `ignore`."""
        skip = set(ignore)
        for name, child in self.children.items():
            if name not in skip and not child.running():
                return f"{name} exited with code {child.popen.returncode}; see {child.log}"
        return None


# ---- the broker ------------------------------------------------------------------------------------------------


def pending_tasks(client: redis.Redis, prefix: str = "") -> int:
    """Tasks queued on every bookfeed queue plus those reserved by a worker and not yet acknowledged (with
    acks_late they sit in kombu's unacked hash), plus the outbox's batches beyond those two (a lost message's,
    until the reaper re-enqueues it), under the deployment's key prefix. 0 only when all three are empty."""
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(prefix + queue)
    pipe.hlen(prefix + UNACKED_KEY)
    pipe.zcard(OutboxKeys(prefix).seq)
    *queued, unacked, outbox = (int(n) for n in pipe.execute())
    ingest = queued[QUEUES.index(INGEST_QUEUE)]
    return sum(queued) + unacked + max(0, outbox - ingest - unacked)


def drain(
    client: redis.Redis,
    prefix: str = "",
    *,
    timeout: float,
    until: Callable[[], bool] = lambda: True,
    progress: Callable[[str], None] | None = None,
    interval: float = 0.5,
) -> bool:
    """Wait until the broker holds no task twice in a row `interval` apart and `until()` holds; False after
    `timeout` seconds. A broker that does not answer (restarting) counts as not drained. `progress` gets a line
    whenever the count changes."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    empty_once = False
    while time.monotonic() < deadline:
        try:
            n = pending_tasks(client, prefix)
        except redis.RedisError:
            n = -1
        if n == 0 and empty_once and until():
            return True
        empty_once = n == 0
        if progress is not None and n != last:
            progress(f"draining: {'broker unreachable' if n < 0 else f'{n} task(s) queued or reserved'}")
        last = n
        time.sleep(interval)
    return False


# ---- command lines ---------------------------------------------------------------------------------------------


def bookfeed_command(*args: str) -> list[str]:
    """The `bookfeed` console script, run with this interpreter (works before `pip install -e .` too)."""
    return [sys.executable, "-m", "stack.cli", *args]


def feed_command(*args: str) -> list[str]:
    """`bookfeed feed`: the production feed, configured by its environment (and `args`)."""
    return bookfeed_command("feed", *args)


def simulate_command(
    *,
    port: int,
    symbols: Iterable[str],
    rate: float | None = None,
    seed: int | None = None,
    faults: Mapping[str, float] | None = None,
) -> list[str]:
    """`bookfeed simulate` on 127.0.0.1:`port`; `faults` maps simulator.FaultConfig settings to values
    ({"malformed_fraction": 0.002} becomes --malformed-fraction 0.002). Ready when its log shows "listening on"."""
    args = ["simulate", "--port", str(port), "--symbols", ",".join(symbols)]
    if rate is not None:
        args += ["--rate", str(rate)]
    if seed is not None:
        args += ["--seed", str(seed)]
    for name, value in (faults or {}).items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return bookfeed_command(*args)


def up_command(*args: str) -> list[str]:
    """`bookfeed up` with `args`."""
    return bookfeed_command("up", *args)
