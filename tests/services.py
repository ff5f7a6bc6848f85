"""Test services: PostgreSQL and Redis from DATABASE_URL / REDIS_URL when set, embedded servers otherwise, and the
processes a test starts, through stack.harness (the same start, readiness wait and stop as `bookfeed up`).

Each run works in its own fresh database (migrated once) and its own Redis key prefix, so a run never touches data
it did not make."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from stack.embedded import Servers, start_servers
from stack.harness import ROOT, NotReadyError, log_line, wait_until, worker_command
from stack.harness import start_process as _start
from stack.harness import stop_process as _stop

__all__ = ["ROOT", "Services", "start_process", "start_services", "start_worker", "stop_process", "wait_for"]

Services = Servers


def start_services(tmp: Path) -> Servers:
    return start_servers(tmp, database_url=os.environ.get("DATABASE_URL"), redis_url=os.environ.get("REDIS_URL"))


def start_worker(
    env: dict[str, str], log: Path, *, concurrency: int = 2, name: str = "test"
) -> subprocess.Popen[bytes]:
    """A real `celery -A workers worker` process; returns once it is ready."""
    args = worker_command(concurrency=concurrency, name=f"{name}-{uuid.uuid4().hex[:6]}", quiet=True)
    return start_process(args, env, log, ready=b"ready.", what="worker")


def start_process(
    args: Sequence[str], env: dict[str, str], log: Path, *, ready: bytes, what: str = "process", timeout: float = 60
) -> subprocess.Popen[bytes]:
    """Start `args` in the repository with its output in `log`; returns once `ready` appears in that log."""
    try:
        return _start(args, log=log, env=env, name=what, ready=log_line(ready), timeout=timeout, cwd=ROOT).popen
    except NotReadyError as exc:
        raise RuntimeError(str(exc)) from None


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL to its whole process group after `timeout` seconds."""
    _stop(proc, timeout=timeout)


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll `cond` every 0.2 s until it holds; fail the test after `timeout` seconds."""
    try:
        wait_until(cond, timeout=timeout, what=what)
    except NotReadyError as exc:
        raise AssertionError(str(exc)) from None
