"""Test services: PostgreSQL and Redis from DATABASE_URL / REDIS_URL when set, embedded servers otherwise.

Each run works in its own fresh database (migrated once) and its own Redis database number (flushed), so a run
never touches data it did not make."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feed.embedded import Servers, start_servers
from feed.up import worker_command

ROOT = Path(__file__).resolve().parent.parent


Services = Servers


def start_services(tmp: Path) -> Servers:
    return start_servers(tmp, database_url=os.environ.get("DATABASE_URL"), redis_url=os.environ.get("REDIS_URL"))


def start_worker(
    env: dict[str, str], log: Path, *, concurrency: int = 2, name: str = "test"
) -> subprocess.Popen[bytes]:
    """A real `celery -A workers worker` process; returns once it answers a ping."""
    args = [
        *worker_command(concurrency=concurrency, name=f"{name}-{uuid.uuid4().hex[:6]}"),
        "--without-gossip",
        "--without-mingle",
    ]
    return start_process(args, env, log, ready=b"ready.", what="worker")


def start_process(
    args: list[str], env: dict[str, str], log: Path, *, ready: bytes, what: str = "process", timeout: float = 60
) -> subprocess.Popen[bytes]:
    """Start `args` in the repository with its output in `log`; returns once `ready` appears in that log."""
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        if ready in log.read_bytes():
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not become ready: {log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll `cond` every 0.2 s until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not met within {timeout:.0f}s")
